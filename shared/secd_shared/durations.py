"""Durations: secd counts in seconds; `runfor` (secd.yml, RunSpec, [builder] max_runfor_h) is the
one value people write in hours, and it becomes seconds here and nowhere else.
"""

from __future__ import annotations

__all__ = ["SECONDS_PER_HOUR", "hours_to_s"]

SECONDS_PER_HOUR = 3600


def hours_to_s(hours: float) -> float:
    """Seconds in `hours` (runfor: 0.05 -> 180.0)."""
    return hours * SECONDS_PER_HOUR
