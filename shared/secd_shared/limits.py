"""What one run may use: memory, CPUs, processes, /tmp and disk, in one place.

The site sets a default and a maximum for each (`[limits]` and `[limits.max]` in the config);
a project may ask for other values in its `secd.yml` (`limits:`), within the maximum. The builder
checks the request (so a bad one fails early, naming the field), the executor resolves and
enforces it (and clamps again: it trusts no event to stay within the site's maximum).
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
from msgspec import Struct

__all__ = [
    "LIMIT_NAMES",
    "LimitValues",
    "Limits",
    "LimitsConfig",
    "RequestedLimits",
    "check_count",
    "format_size",
    "parse_requested",
    "parse_size",
    "resolve_limits",
]

# In the order the docs and messages name them.
LIMIT_NAMES: tuple[str, ...] = ("memory", "cpus", "pids", "tmp", "disk")
_SIZES = ("memory", "tmp", "disk")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")
# Beyond any machine: keeps values inside what msgspec, cgroups and Kubernetes accept.
_MAX_BYTES = 2**60
_MAX_PIDS = 4_194_304
_MAX_CPUS = 4096


class Limits(Struct, frozen=True, kw_only=True):
    """Resolved limits of one run, in bytes, CPUs and processes."""

    memory: int
    cpus: float
    pids: int
    tmp: int
    disk: int


class RequestedLimits(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a project asked for in secd.yml; None keeps the site's default."""

    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    tmp: int | None = None
    disk: int | None = None


class LimitValues(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One set of limits as an operator writes them: sizes as 8GiB, 500MB or bytes."""

    memory: int | str = "4GiB"
    cpus: float = 2.0
    pids: int = 512
    tmp: int | str = "1GiB"
    disk: int | str = "10GiB"


class LimitsConfig(LimitValues, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The site's `[limits]`: the values a run gets, and (`[limits.max]`) the most it may ask."""

    max: LimitValues = msgspec.field(
        default_factory=lambda: LimitValues(
            memory="16GiB", cpus=8.0, pids=4096, tmp="8GiB", disk="100GiB"
        )
    )

    def defaults(self) -> Limits:
        """The limits of a run that asks for nothing."""
        return _values(self, "limits")

    def maximum(self) -> Limits:
        """The most any run may have."""
        return _values(self.max, "limits.max")


def parse_size(value: Any, field: str) -> int:
    """Bytes from 8GiB, 512M, 1.5G, 100kB or a plain number; ValueError naming `field`."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a size like 4GiB or 512MiB, not {value!r}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, float):
        number, unit = value, ""
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ValueError(f"{field} must be a size like 4GiB or 512MiB, not {value!r}")
    if unit not in _UNITS:
        raise ValueError(
            f"{field}: unknown unit {unit!r}; use KiB, MiB, GiB or TiB (or kB, MB, GB)"
        )
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size < 1 or size > _MAX_BYTES:
        raise ValueError(f"{field} must be between 1 byte and {format_size(_MAX_BYTES)}")
    return int(size)


def format_size(size: int) -> str:
    """A size as people read it: 4 GiB, 512 MiB, 100 B."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            amount = size / factor
            return f"{amount:.0f} {unit}" if amount == int(amount) else f"{amount:.1f} {unit}"
    return f"{size} B"


def check_count(value: Any, field: str, *, integer: bool, most: float) -> float:
    """A positive number of CPUs (fractions allowed) or processes (whole)."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be {kind} greater than 0, not {value!r}")
    if not math.isfinite(value) or value <= 0 or (integer and value != int(value)):
        raise ValueError(f"{field} must be {kind} greater than 0, not {value!r}")
    if value > most:
        raise ValueError(f"{field} must be at most {most:g}")
    return value


def _values(values: LimitsConfig | LimitValues, where: str) -> Limits:
    return Limits(
        memory=parse_size(values.memory, f"{where}.memory"),
        cpus=float(check_count(values.cpus, f"{where}.cpus", integer=False, most=_MAX_CPUS)),
        pids=int(check_count(values.pids, f"{where}.pids", integer=True, most=_MAX_PIDS)),
        tmp=parse_size(values.tmp, f"{where}.tmp"),
        disk=parse_size(values.disk, f"{where}.disk"),
    )


def parse_requested(data: Any, maximum: Limits) -> RequestedLimits:
    """secd.yml's `limits:` mapping, checked against the site's maximum; ValueError names it."""
    if not isinstance(data, dict):
        raise ValueError("limits must be a mapping like {memory: 8GiB, cpus: 4}")
    unknown = [str(key) for key in data if key not in LIMIT_NAMES]
    if unknown:
        raise ValueError(f"limits.{unknown[0]} is not a limit; use {', '.join(LIMIT_NAMES)}")
    # An int or a float by name; RequestedLimits says which field is which.
    asked: dict[str, Any] = {}
    for name, value in data.items():
        field = f"limits.{name}"
        if name in _SIZES:
            asked[name] = parse_size(value, field)
        elif name == "cpus":
            asked[name] = float(check_count(value, field, integer=False, most=_MAX_CPUS))
        else:
            asked[name] = int(check_count(value, field, integer=True, most=_MAX_PIDS))
        most = getattr(maximum, name)
        if asked[name] > most:
            shown = format_size(most) if name in _SIZES else f"{most:g}"
            raise ValueError(f"{field} must be at most {shown} on this site")
    return RequestedLimits(**asked)


def resolve_limits(config: LimitsConfig, asked: RequestedLimits | None) -> Limits:
    """The run's limits: the site's defaults, overridden by what it asked, capped at the maximum."""
    defaults, maximum = config.defaults(), config.maximum()
    values = {}
    for name in LIMIT_NAMES:
        wanted = getattr(asked, name, None) if asked is not None else None
        value = getattr(defaults, name) if wanted is None else wanted
        values[name] = min(value, getattr(maximum, name))
    return Limits(**values)
