"""Which columns of a table hold counts: those named like counts, or (for `kind: counts`) every
numeric column not named like a label. The statistical disclosure control checks on those counts
are in `sdc`."""

from __future__ import annotations

import math

from secd_shared.columns import column_words

from .tables import ParsedTable

_COUNT_WORDS = frozenset(
    {"n", "count", "counts", "total", "number", "freq", "frequency", "patients", "cases", "antal"}
)
# Numeric columns that label a row rather than count (a year, an age band, a code).
_LABEL_WORDS = frozenset({"year", "age", "band", "group", "code", "id", "month", "week", "day"})


def as_number(value: object) -> float | None:
    """A cell as a number (a string of digits too), None when it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip().replace(" ", "")
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def numeric_columns(table: ParsedTable) -> list[int]:
    """The columns whose every non-empty cell is a number."""
    numeric = []
    for c in range(len(table.columns)):
        values = [r[c] for r in table.rows if c < len(r) and r[c] not in (None, "")]
        if values and all(as_number(v) is not None for v in values):
            numeric.append(c)
    return numeric


def count_columns(table: ParsedTable, *, named_only: bool = False) -> list[int]:
    """The columns holding counts: those named like counts, or else (unless `named_only`) every
    numeric column that is not named like a label."""
    numeric = numeric_columns(table)
    named = [c for c in numeric if set(column_words(table.columns[c])) & _COUNT_WORDS]
    if named or named_only:
        return named
    return [c for c in numeric if not set(column_words(table.columns[c])) & _LABEL_WORDS]
