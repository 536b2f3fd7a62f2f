"""Small counts, for outputs declared `kind: counts`: a count under the site's threshold (zero
is fine) or one not rounded to the site's base is held. Full statistical disclosure control is
the next issue's."""

from __future__ import annotations

from .base import Finding, Rules, count_words
from .tables import ParsedTable, column_words

NAME = "small-counts"
VERSION = 1

_COUNT_WORDS = frozenset(
    {"n", "count", "counts", "total", "number", "freq", "frequency", "patients", "cases", "antal"}
)
# Numeric columns that label a row rather than count (a year, an age band, a code).
_LABEL_WORDS = frozenset({"year", "age", "band", "group", "code", "id", "month", "week", "day"})


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        return None


def count_columns(table: ParsedTable) -> list[int]:
    """The columns holding counts: those named like counts, or else every numeric column that is
    not named like a label."""
    numeric = []
    for c in range(len(table.columns)):
        values = [r[c] for r in table.rows if c < len(r) and r[c] not in (None, "")]
        if values and all(_number(v) is not None for v in values):
            numeric.append(c)
    named = [c for c in numeric if set(column_words(table.columns[c])) & _COUNT_WORDS]
    if named:
        return named
    return [c for c in numeric if not set(column_words(table.columns[c])) & _LABEL_WORDS]


def check_counts(table: ParsedTable, rules: Rules) -> list[Finding]:
    """Counts under `small_count_threshold` (but not 0) or not multiples of `rounding_base`."""
    small = unrounded = fractional = 0
    for c in count_columns(table):
        for row in table.rows:
            value = _number(row[c]) if c < len(row) else None
            if value is None:
                continue
            if not value.is_integer():
                fractional += 1
                continue
            if 0 < abs(value) < rules.small_count_threshold:
                small += 1
            elif rules.rounding_base > 1 and value % rules.rounding_base:
                unrounded += 1
    findings = []
    if small:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{count_words(small, 'count')} under {rules.small_count_threshold} (other than 0)",
            )
        )
    if unrounded:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{count_words(unrounded, 'count')} not rounded to a multiple of "
                f"{rules.rounding_base}",
            )
        )
    if fractional:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{count_words(fractional, 'value')} in count columns are not whole numbers",
            )
        )
    return findings
