"""Differencing: two released tables of one project, each safe alone, whose cell-wise difference
counts a group under the threshold (the same table before and after a few patients were
excluded) are as good as the small count itself. A new table is compared with every counts or
table output the project had released (the airlock keeps them: secd_airlock.released).

Tables are compared when they have the same label columns; cells with the same labels and
column are subtracted. Cells rounded to the site's base in both tables are not compared:
rounding is what protects a difference (OpenSAFELY's reason to round).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from .base import Finding, Kind, Rules, count_words
from .filetype import TEXT_TYPES, sniff
from .sdc import VERSION, Cell, FrequencyTable, Shown, frequency_table, named_cells, plain_label
from .tables import parse_table

NAME = "sdc-differencing"
# Released tables read before, by sha256 and kind: a project's tables are compared again at
# each of its checks. Only the cells are kept, never the bytes.
_READ: OrderedDict[tuple[str, str], FrequencyTable | None] = OrderedDict()
_READ_KEEP = 4096


@dataclass(frozen=True)
class ReleasedTable:
    """A counts or table output released to a project: its name, sha256, run, kind and bytes."""

    name: str
    sha256: str
    run_id: str
    kind: Kind
    data: bytes


def read_frequencies(data: bytes, kind: Kind) -> FrequencyTable | None:
    """A file's frequency table (see `sdc`), None when it holds none."""
    detected = sniff(data)
    if detected not in TEXT_TYPES:
        return None
    table = parse_table(data.decode("utf-8", "replace"), detected)
    if table is None:
        return None
    return frequency_table(table, counts=kind == "counts")


def _released_frequencies(table: ReleasedTable) -> FrequencyTable | None:
    key = (table.sha256, table.kind)
    if key in _READ:
        _READ.move_to_end(key)
        return _READ[key]
    found = _READ[key] = read_frequencies(table.data, table.kind)
    while len(_READ) > _READ_KEEP:
        _READ.popitem(last=False)
    return found


def _rounded(a: float, b: float, base: int) -> bool:
    return base > 1 and a % base == 0 and b % base == 0


def differences(new: FrequencyTable, old: FrequencyTable, rules: Rules) -> list[Cell]:
    """The new table's cells that differ from the old table's same cell by more than 0 and less
    than the threshold (not both rounded)."""
    if new.labels != old.labels:
        return []
    before = {c.key: c.value for c in old.cells}
    found = []
    for cell in new.cells:
        earlier = before.get(cell.key)
        if earlier is None or _rounded(cell.value, earlier, rules.rounding_base):
            continue
        if 0 < abs(cell.value - earlier) < rules.small_count_threshold:
            found.append(cell)
    return found


def check_differencing(
    new: FrequencyTable,
    sha256: str,
    released: Iterable[ReleasedTable],
    rules: Rules,
    shown: Shown = plain_label,
) -> list[Finding]:
    """A `review` finding per earlier released table whose difference with this one isolates a
    group under the threshold, naming both tables and the cells."""
    findings = []
    for earlier in released:
        if earlier.sha256 == sha256:
            continue
        old = _released_frequencies(earlier)
        if old is None:
            continue
        cells = differences(new, old, rules)
        if not cells:
            continue
        name = earlier.name if shown(earlier.name) else "(a table)"
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"this table (sha256 {sha256[:12]}) and {name} (sha256 {earlier.sha256[:12]}, "
                f"released in run {earlier.run_id}) differ by under "
                f"{rules.small_count_threshold} in {count_words(len(cells), 'cell')}: "
                f"{named_cells(cells, shown, counts=False)}",
            )
        )
    return findings
