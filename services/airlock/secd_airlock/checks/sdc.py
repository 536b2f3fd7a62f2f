"""Statistical disclosure control for `kind: counts` and `kind: table` outputs: the rules of ACRO
(threshold, zeros, N-K dominance, p-ratio) and OpenSAFELY's rounding, on the table a job wrote.

Two shapes of table are checked (docs/researcher.md shows them to researchers):
- a frequency table: row labels and count cells. In a `kind: counts` output every numeric column
  not named like a label (year, age, band, code...) holds counts; in a `kind: table` output only
  the columns named like counts (n, count, total, patients, cases...). Long (`diagnosis,sex,n`)
  and wide (`age_band,F,M`, a crosstab as pandas or ACRO writes it) tables both read as cells.
- a magnitude table: cells that are sums (or means) of people's values. The airlock can judge
  dominance only from the contributors, which the job writes to a sidecar file beside the table,
  `<table>.contributors.json`, never released: a list of
  `{"row": {"<label column>": "<label>", ...}, "column": "<value column>", "contributors": [..]}`.

ACRO's rules are written out here rather than imported: ACRO checks a pandas DataFrame of
microdata while the job runs, the airlock sees only the table the job wrote, and the acro
package (pandas<=2.3.3, statsmodels, matplotlib) would pin the airlock's environment for a few
lines of arithmetic.

Evidence names cells by their row labels and column (`[diagnosis=Asthma; n] = 3`), with the
count itself and never a magnitude or a contributor's value; a label that could carry data (the
caller's `shown` says) is replaced by the row's position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .base import Finding, Rules, count_words
from .counts import as_number, count_columns, numeric_columns
from .tables import ParsedTable

VERSION = 1
THRESHOLD = "sdc-threshold"
ZEROS = "sdc-zeros"
ROUNDING = "sdc-rounding"
DOMINANCE = "sdc-dominance"
P_RATIO = "sdc-p-ratio"
CONTRIBUTORS = "sdc-contributors"
NAMES = (THRESHOLD, ZEROS, ROUNDING, DOMINANCE, P_RATIO, CONTRIBUTORS)

SIDECAR_SUFFIX = ".contributors.json"
# Cells named in one finding; the rest are counted.
MAX_NAMED_CELLS = 5

Shown = Callable[[str], bool]
_PLAIN = re.compile(r"[\w .,:;/<>=%+\-()]{1,40}")


def plain_label(text: str) -> bool:
    """A label short and plain enough to quote in evidence (the service adds a source check)."""
    return bool(_PLAIN.fullmatch(text))


@dataclass(frozen=True)
class Cell:
    """One cell of a table: its row's labels (column, label), its column and its number."""

    row: tuple[tuple[str, str], ...]
    column: str
    value: float
    position: int  # the row's place among the data rows, from 1

    @property
    def key(self) -> tuple[tuple[tuple[str, str], ...], str]:
        """What identifies the cell in another table with the same labels."""
        return self.row, self.column


@dataclass(frozen=True)
class FrequencyTable:
    """A table read as counts: its label columns and its count cells."""

    labels: tuple[str, ...]
    cells: tuple[Cell, ...]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def frequency_table(table: ParsedTable, *, counts: bool) -> FrequencyTable | None:
    """The table's count cells (see the module docstring for which columns count), None when it
    has no count column. A row with every count cell empty (the index-name row pandas writes
    under a crosstab's header, a suppressed row) holds no cells."""
    values = count_columns(table, named_only=not counts)
    if counts and _index_name_row(table):
        # A crosstab as pandas writes it: every column after the index holds counts, whatever
        # its category is called (ACRO's grant types include "N").
        values = [c for c in numeric_columns(table) if c > 0] or values
    if not values:
        return None
    labels = [c for c in range(len(table.columns)) if c not in values]
    cells = []
    for r, row in enumerate(table.rows, start=1):
        key = tuple((table.columns[c], _text(row[c] if c < len(row) else None)) for c in labels)
        for c in values:
            number = as_number(row[c]) if c < len(row) else None
            if number is not None:
                cells.append(Cell(key, table.columns[c], number, r))
    return FrequencyTable(tuple(table.columns[c] for c in labels), tuple(cells))


def _index_name_row(table: ParsedTable) -> bool:
    """Whether the first data row is the index's name pandas writes under a crosstab's header
    (`year,,,`): a label in the first column and nothing else."""
    if not table.rows or len(table.columns) < 2:
        return False
    first = table.rows[0]
    return bool(_text(first[0])) and all(_text(v) == "" for v in first[1:])


def cell_name(cell: Cell, shown: Shown = plain_label) -> str:
    """`[diagnosis=Asthma, sex=F; n]`; a label that may not be shown gives the row's position."""
    if all(shown(label) and shown(column) for column, label in cell.row):
        row = ", ".join(f"{column}={label}" for column, label in cell.row)
    else:
        row = f"row {cell.position}"
    column = cell.column if shown(cell.column) else "a column"
    return f"[{row}; {column}]" if row else f"[{column}]"


def _count(value: float) -> str:
    return str(int(value)) if value.is_integer() else "a fraction"


def named_cells(cells: Sequence[Cell], shown: Shown, *, counts: bool = True) -> str:
    """The first cells by name (with their counts when `counts`), and how many more."""
    named = [
        f"{cell_name(c, shown)} = {_count(c.value)}" if counts else cell_name(c, shown)
        for c in cells[:MAX_NAMED_CELLS]
    ]
    more = len(cells) - MAX_NAMED_CELLS
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


def check_frequencies(
    table: FrequencyTable, rules: Rules, shown: Shown = plain_label
) -> list[Finding]:
    """Threshold, zeros and rounding over a frequency table's cells."""
    small, zeros, unrounded, fractional = [], [], [], []
    for cell in table.cells:
        value = cell.value
        if not value.is_integer() or value < 0:
            fractional.append(cell)
        elif value == 0:
            zeros.append(cell)
        elif value < rules.small_count_threshold:
            small.append(cell)
        elif rules.rounding_base > 1 and value % rules.rounding_base:
            unrounded.append(cell)
    findings = []
    if small:
        findings.append(
            Finding(
                THRESHOLD,
                VERSION,
                "review",
                f"{count_words(len(small), 'cell')} under the site's threshold of "
                f"{rules.small_count_threshold}: {named_cells(small, shown)}",
            )
        )
    if zeros and rules.zeros_review:
        findings.append(
            Finding(
                ZEROS,
                VERSION,
                "review",
                f"{count_words(len(zeros), 'cell')} of 0 (a zero can say everyone in a group "
                f"shares an attribute): {named_cells(zeros, shown, counts=False)}",
            )
        )
    if unrounded:
        findings.append(
            Finding(
                ROUNDING,
                VERSION,
                "review",
                f"{count_words(len(unrounded), 'count')} not rounded to a multiple of "
                f"{rules.rounding_base}: {named_cells(unrounded, shown, counts=False)}",
            )
        )
    if fractional:
        findings.append(
            Finding(
                THRESHOLD,
                VERSION,
                "review",
                f"{count_words(len(fractional), 'cell')} of count columns are not whole "
                f"numbers of 0 or more: {named_cells(fractional, shown, counts=False)}",
            )
        )
    return findings


@dataclass(frozen=True)
class MagnitudeCell:
    """A cell of a magnitude table and the values of the people behind it."""

    cell: Cell
    contributors: tuple[float, ...]


def magnitude_cells(table: ParsedTable, sidecar: bytes) -> tuple[list[MagnitudeCell], list[str]]:
    """The table's cells with their contributors from the sidecar file, and what in the sidecar
    could not be used (said in words, no values)."""
    try:
        entries = json.loads(sidecar)
    except ValueError:
        return [], ["the contributors file is not JSON"]
    if not isinstance(entries, list):
        return [], ["the contributors file is not a list of cells"]
    problems: list[str] = []
    found: list[MagnitudeCell] = []
    columns = {name: c for c, name in enumerate(table.columns)}
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("row", {}), dict):
            problems.append(f"entry {i} is not an object with a row")
            continue
        row_labels = {str(k): _text(v) for k, v in entry.get("row", {}).items()}
        values = entry.get("contributors")
        if not isinstance(values, list) or any(as_number(v) is None for v in values):
            problems.append(f"entry {i} has no list of numeric contributors")
            continue
        column = entry.get("column")
        if column is None:
            candidates = [
                name
                for name, c in columns.items()
                if name not in row_labels
                and all(as_number(r[c]) is not None for r in table.rows if c < len(r) and r[c])
            ]
            column = candidates[0] if len(candidates) == 1 else None
        if column not in columns or any(k not in columns for k in row_labels):
            problems.append(f"entry {i} names no column of the table")
            continue
        c = columns[column]
        rows = [
            (r, row)
            for r, row in enumerate(table.rows, start=1)
            if all(_text(row[columns[k]]) == v for k, v in row_labels.items())
        ]
        if len(rows) != 1:
            problems.append(f"entry {i} matches {count_words(len(rows), 'row')}, not one")
            continue
        r, row = rows[0]
        value = as_number(row[c]) if c < len(row) else None
        key = tuple(sorted(row_labels.items()))
        contributors = tuple(float(as_number(v) or 0.0) for v in values)
        found.append(MagnitudeCell(Cell(key, str(column), value or 0.0, r), contributors))
    return found, problems


def check_magnitudes(
    cells: Iterable[MagnitudeCell], rules: Rules, shown: Shown = plain_label
) -> list[Finding]:
    """Contributors under the threshold, N-K dominance, p-ratio, and cells that are neither the
    sum nor the mean of their contributors (the sidecar is the job's claim)."""
    few, negative, dominated, ratio, mismatched = [], [], [], [], []
    for item in cells:
        values = sorted(item.contributors, reverse=True)
        total = sum(values)
        if len(values) < rules.small_count_threshold:
            few.append(item.cell)
        if any(v < 0 for v in values):
            negative.append(item.cell)
            continue
        if total > 0 and sum(values[: rules.dominance_n]) / total >= rules.dominance_k:
            dominated.append(item.cell)
        top1 = values[0] if values else 0.0
        if top1 > 0 and (total - sum(values[:2])) / top1 < rules.p_ratio:
            ratio.append(item.cell)
        mean = total / len(values) if values else 0.0
        tolerance = max(abs(total) * 0.01, 0.5)
        if abs(item.cell.value - total) > tolerance and abs(item.cell.value - mean) > max(
            abs(mean) * 0.01, 0.05
        ):
            mismatched.append(item.cell)
    findings = []
    rows = [
        (few, THRESHOLD, f"fewer than {rules.small_count_threshold} contributors"),
        (negative, DOMINANCE, "negative contributions (dominance is not defined)"),
        (
            dominated,
            DOMINANCE,
            f"the largest {rules.dominance_n} contributors hold at least "
            f"{rules.dominance_k:.0%} of the total",
        ),
        (
            ratio,
            P_RATIO,
            f"contributors other than the largest two hold under {rules.p_ratio:.0%} of the "
            "largest (p-ratio)",
        ),
        (
            mismatched,
            CONTRIBUTORS,
            "a value that is neither the sum nor the mean of the contributors listed for it",
        ),
    ]
    for found, name, what in rows:
        if found:
            findings.append(
                Finding(
                    name,
                    VERSION,
                    "review",
                    f"{count_words(len(found), 'cell')} with {what}: "
                    f"{named_cells(found, shown, counts=False)}",
                )
            )
    return findings


def check_sdc(
    table: ParsedTable,
    rules: Rules,
    *,
    counts: bool,
    contributors: bytes = b"",
    shown: Shown = plain_label,
) -> list[Finding]:
    """Every SDC rule that applies to one table: magnitude rules on the cells its contributors
    file lists, frequency rules on its count cells (of other columns)."""
    findings: list[Finding] = []
    magnitude_columns: set[str] = set()
    if contributors:
        cells, problems = magnitude_cells(table, contributors)
        magnitude_columns = {m.cell.column for m in cells}
        findings += check_magnitudes(cells, rules, shown)
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            findings.append(
                Finding(
                    CONTRIBUTORS,
                    VERSION,
                    "review",
                    f"the contributors file cannot be checked: {'; '.join(problems[:3])}{more}",
                )
            )
    frequencies = frequency_table(table, counts=counts)
    if frequencies is not None:
        kept = tuple(c for c in frequencies.cells if c.column not in magnitude_columns)
        findings += check_frequencies(FrequencyTable(frequencies.labels, kept), rules, shown)
    elif counts and not contributors:
        findings.append(
            Finding(THRESHOLD, VERSION, "review", "declared counts but holds no count column")
        )
    return findings
