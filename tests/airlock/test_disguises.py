"""Disguised values (issue 11): each once passed every check. The readings that undo them
(checks/disguises.py), Ascii85 and glued runs (encodings), reversed and ROT13 values (the source
index), and the outputs and log lines they are in; and what they must leave alone."""

from __future__ import annotations

import base64
import json
import random

import pytest

from secd_airlock.checks import OutputFile, check_file, check_line
from secd_airlock.checks.disguises import readings
from secd_airlock.checks.encodings import find_encoded
from secd_airlock.checks.identifiers import find_personnummer
from tests.airlock.make_corpus import COLUMNS, ROWS, _csv

DUMP = _csv(COLUMNS, ROWS[:30])
PNR = ROWS[4][2].replace("-", "")[2:]  # ten digits
NAME = ROWS[4][1]


@pytest.mark.parametrize("sep", [" ", "-", ".", ", ", " , ", "\n", ";", "/"])
def test_single_digits_with_one_separator_are_joined(sep):
    text = f"id: {sep.join(PNR)} (checked)"
    assert not find_personnummer(text)
    assert any(find_personnummer(r) for r in readings(text))


def test_a_personnummer_split_by_a_blank_is_read_whole():
    assert any(PNR in r.replace("-", "") for r in readings(f"checked {PNR[:6]} {PNR[6:]}"))
    assert any(find_personnummer(r) for r in readings(f"x {PNR[:6]}  - {PNR[6:]} y"))


@pytest.mark.parametrize(
    "disguised",
    [
        json.dumps([ord(c) for c in NAME]),  # code points
        json.dumps(list(NAME.encode())),  # UTF-8 bytes
        "[" + " ".join(str(ord(c)) for c in NAME) + "]",  # numpy
        "".join(f"%{b:02X}" for b in NAME.encode()),
        NAME.replace(" ", "+").replace("s", "%73"),
        "".join(f"\\u{ord(c):04x}" for c in NAME),
        "".join(f"\\x{b:02x}" for b in NAME.encode()),
        "".join(f"&#{ord(c)};" for c in NAME),
        "".join(f"={b:02X}" for b in NAME.encode()),
        ", ".join(NAME.replace(" ", "")),  # one letter a cell
    ],
)
def test_escapes_and_codes_read_as_the_name(disguised):
    assert NAME.split()[-1] not in disguised
    assert any(NAME.split()[-1] in r for r in readings(f"value: {disguised}\nnext line"))


def test_ascii85_adobe_and_bare_are_decoded(index, rules):
    for encoded in (base64.a85encode(DUMP, adobe=True), base64.a85encode(DUMP)):
        decoded, _ = find_encoded("appendix " + encoded.decode(), rules)
        assert [d.layers for d in decoded] == [("ascii85",)]
        assert decoded[0].text == DUMP.decode()
    wrapped = base64.a85encode(DUMP, adobe=True, wrapcol=76).decode()
    assert find_encoded(wrapped, rules)[0][0].text == DUMP.decode()


@pytest.mark.parametrize("encode", [base64.b85encode, base64.b64encode])
@pytest.mark.parametrize("prefix", ["payload", "x", "blob_data0123456789"])
def test_a_run_glued_to_a_prefix_is_decoded_from_its_payload(encode, prefix, index, rules):
    text = f"see {prefix}{encode(DUMP).decode()} for details"
    decoded, opaque = find_encoded(text, rules)
    assert decoded and decoded[0].text == DUMP.decode(), opaque
    assert decoded[0].layers[0].endswith(f"after {len(prefix)} characters")
    report = check_file(OutputFile("notes.txt", text.encode(), "text"), index, rules)
    assert report.verdict == "block"


def test_reversed_and_rot13_values_match_the_source(index):
    rot13 = str.maketrans(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
    )
    row = f"{ROWS[9][1]},{ROWS[9][2]},{ROWS[9][6]}"
    for text in (row[::-1], row.translate(rot13)):
        match = index.scan_text(text)
        assert match.rows == 1, text
        assert set(match.tables["patients"].columns) >= {"name", "personnummer"}
    names = [r[1] for r in ROWS[:25]]
    plain = index.scan_text("\n".join(names)).tables["patients"]
    reversed_ = index.scan_text("\n".join(n[::-1] for n in names)).tables["patients"]
    assert reversed_ == plain and plain.single_column_rows >= 25


@pytest.mark.parametrize(
    "line",
    [
        f"patient {' '.join(PNR)}",
        f"patient {'-'.join(PNR)}",
        f"checked {PNR[:6]} {PNR[6:]}",
        f"name={json.dumps([ord(c) for c in ROWS[4][2]])}",
        "pnr=" + "".join(f"%{b:02X}" for b in ROWS[4][2].encode()),
    ],
)
def test_a_log_line_with_a_disguised_personnummer_is_withheld(line, index, rules):
    found = check_line(line, index, rules)
    assert found is not None and found.check in ("identifier-values", "source-match")


def test_one_digit_a_cell_in_rows_and_in_columns_is_read(index, rules):
    head = ROWS[:10]
    digits = [r[2].replace("-", "")[2:] for r in head]
    by_row = _csv([f"d{i}" for i in range(10)], [tuple(d) for d in digits])
    by_column = _csv([f"p{i}" for i in range(10)], list(zip(*digits, strict=True)))
    for data in (by_row, by_column):
        report = check_file(OutputFile("digits.csv", data, "table"), index, rules)
        assert any(f.check == "identifier-values" and f.verdict == "block" for f in report.findings)


def test_numbers_of_real_outputs_are_not_read_as_values(index, rules):
    rng = random.Random(5)
    outputs = {
        "coef.json": json.dumps({"coef": [[round(rng.gauss(0, 1), 6) for _ in range(20)]] * 10}),
        # Counts between 32 and 126 decode to printable characters; the reading finds nothing.
        "hist.json": json.dumps({"counts": [5 * rng.randint(7, 25) for _ in range(40)]}),
        "counts.csv": "diagnosis,a,b,c,d\n"
        + "".join(
            f"D{i},{','.join(str(5 * rng.randint(2, 20)) for _ in range(4))}\n" for i in range(10)
        ),
        "notes.md": "Folds 1 2 3 4 5; stages I-II-III-IV; https://example.org/?q=a%20b%20c\n"
        "n=200 =20 seed=42; predictions [0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1]\n",
    }
    for name, text in outputs.items():
        kind = "counts" if name.endswith(".csv") else "metrics"
        report = check_file(OutputFile(name, text.encode(), kind), index, rules)
        assert report.verdict == "pass", (name, report.findings)


def test_a_flat_list_of_200_coefficients_is_held_by_the_row_limit_only(index, rules):
    """A documented limit: a column of 200 numbers may be a column of the table, so the table
    check holds it for review; no reading adds anything to it."""
    coef = json.dumps({"coef": [round(random.Random(2).gauss(0, 1), 6) for _ in range(200)]})
    report = check_file(OutputFile("coef.json", coef.encode(), "metrics"), index, rules)
    assert [(f.check, f.verdict) for f in report.findings] == [("table", "review")]
