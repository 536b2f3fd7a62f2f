"""The neighbour-replay check: a file that changes when a few patients are left out is held."""

from __future__ import annotations

import pytest

from secd_airlock.checks.replay import NAME, compare, same_number


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("1200", "1200", True),
        ("12.3", "12.34", True),  # at the precision of the less precise
        ("12.3", "12.36", False),
        ("45.2", "45.3", False),
        ("100", "97", False),  # a whole number is exact
        ("1e3", "1000", True),
        ("0.50", "0.5", True),
        ("-3", "3", False),
    ],
)
def test_numbers_are_the_same_within_the_precision_printed(a: str, b: str, same: bool) -> None:
    assert same_number(a, b) is same


def test_a_rounded_table_passes() -> None:
    mine = b"ward,patients\nA,1200\nB,300\n"
    finding = compare("counts.csv", "counts", mine, b"ward,patients\r\nA,1200\r\nB,300\r\n")
    assert (finding.check, finding.verdict) == (NAME, "pass")


def test_a_changed_cell_is_named_by_place_never_by_value() -> None:
    finding = compare("t.csv", "table", b"a,b\n1,37.25\n2,x\n", b"a,b\n1,37.5\n2,y\n")
    assert finding.verdict == "review"
    assert "2 cells differ" in finding.evidence and "row 2, column 2" in finding.evidence
    assert "37" not in finding.evidence


def test_an_encoded_age_in_text_is_held() -> None:
    # age 67 XOR 0x5a, as hex: no check decodes it; the replay without that patient differs.
    mine, theirs = format(67 ^ 0x5A, "02x").encode(), format(54 ^ 0x5A, "02x").encode()
    finding = compare("notes.txt", "text", b"checksum " + mine, b"checksum " + theirs)
    assert finding.verdict == "review"
    assert "line 1" in finding.evidence and mine.decode() not in finding.evidence


def test_missing_and_binary_files() -> None:
    assert compare("plot.png", "figure", b"\x89PNG1", None).verdict == "review"
    finding = compare("plot.png", "figure", b"\x89PNG\x00\x01", b"\x89PNG\x00\x02\x03")
    assert finding.verdict == "review" and "byte 5" in finding.evidence
    assert compare("m.skops", "model", b"\x00\x01", b"\x00\x01").verdict == "pass"


def test_extra_lines_count_as_differences() -> None:
    finding = compare("notes.txt", "text", b"n 5\nmore\n", b"n 5\n")
    assert finding.verdict == "review" and "line 2" in finding.evidence
