"""Each check on its own: what it finds, what it lets through, and its evidence."""

from __future__ import annotations

import base64
import gzip
import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from secd_airlock.checks import (
    Finding,
    OutputFile,
    Rules,
    SourceIndex,
    Table,
    check_line,
    marker,
    redact_log,
    reencode_image,
    sniff,
    worst,
)
from secd_airlock.checks.encodings import find_encoded
from secd_airlock.checks.filetype import check_type
from secd_airlock.checks.identifiers import (
    check_identifier_values,
    find_emails,
    find_personnummer,
    find_phones,
)
from secd_airlock.checks.sdc import check_sdc
from secd_airlock.checks.source import check_source
from secd_airlock.checks.tables import check_table, identifier_like, parse_table
from secd_airlock.checks.tokens import normalise_value, tokens
from tests.airlock.make_corpus import COLUMNS, KEY, ROWS, _csv, _png, _zip

RULES = Rules()


def test_worst():
    assert worst([]) == "pass"
    found = [Finding("a", 1, "review", ""), Finding("b", 1, "block", "")]
    assert worst(found) == "block"


def test_sniff_reads_content_not_names():
    assert sniff(_png()) == "png"
    assert sniff(_zip({"a.csv": b"x"})) == "zip"
    assert sniff(b"a,b\n1,2\n3,4\n") == "csv"
    assert sniff(b"a\tb\n1\t2\n") == "tsv"
    assert sniff(b'{"auc": 0.8}') == "json"
    assert sniff(b"hello\n") == "txt"
    assert sniff(gzip.compress(b"x")) == "gzip"


def test_zip_named_png_is_blocked_and_figure_passes():
    assert worst(check_type(OutputFile("f.png", _zip({"a": b"b"}), "figure"), RULES)) == "block"
    assert worst(check_type(OutputFile("f.png", _png(), "figure"), RULES)) == "pass"
    assert worst(check_type(OutputFile("f.txt", _png(), "text"), RULES)) == "block"
    assert worst(check_type(OutputFile("a.txt", b"a,b\n1,2\n", "table"), RULES)) == "pass"


def test_size_limit():
    small = Rules(max_file_bytes=10)
    assert worst(check_type(OutputFile("a.txt", b"x" * 11, "text"), small)) == "block"


def test_reencode_drops_text_chunks():
    info = PngInfo()
    info.add_text("Comment", "secret rows")
    data = _png(info=info) + b"trailing"
    clean = reencode_image(data)
    assert b"secret rows" not in clean and b"trailing" not in clean
    with Image.open(io.BytesIO(clean)) as image, Image.open(io.BytesIO(data)) as original:
        assert image.tobytes() == original.tobytes()


def test_identifier_like_column_names():
    for name in ["PatientID", "patient_id", "pid", "Personnummer", "SSN", "mrn", "name",
                 "E-mail", "phone_number", "address", "date_of_birth", "BirthDate"]:  # fmt: skip
        assert identifier_like(name), name
    for name in ["diagnosis", "age", "n", "mean_hba1c", "auc", "model"]:
        assert not identifier_like(name), name


def test_table_limits_both_orientations():
    long = parse_table(_csv(["x"], [(i,) for i in range(150)]).decode(), "csv")
    wide = parse_table(_csv([f"c{i}" for i in range(150)], [tuple(range(150))]).decode(), "csv")
    assert worst(check_table(long, RULES)) == "review"
    assert worst(check_table(wide, RULES)) == "review"
    small = parse_table("diagnosis,n\nAsthma,20\n", "csv")
    assert check_table(small, RULES) == []


def test_table_from_json_orientations():
    records = parse_table(json.dumps([{"a": 1, "b": 2}, {"a": 3, "b": 4}]), "json")
    columns = parse_table(json.dumps({"a": [1, 3], "b": [2, 4]}), "json")
    assert records.rows == columns.rows == [[1, 2], [3, 4]]


def test_identifier_values():
    pnr = ROWS[0][2]
    assert find_personnummer(f"x {pnr} y") and find_personnummer(pnr.replace("-", "")[2:])
    assert not find_personnummer(pnr[:-1] + str((int(pnr[-1]) + 1) % 10))  # checksum wrong
    assert find_emails("a.b@example.se, c@d.org") == {"a.b@example.se", "c@d.org"}
    assert find_phones("070-123 45 67 and +46 8 123 456 78") and not find_phones("0.4021")
    found = check_identifier_values(pnr, RULES)
    assert found[0].verdict == "review" and pnr not in found[0].evidence


def test_normalisation():
    assert normalise_value(45.0) == normalise_value("45") == "45"
    assert normalise_value("19850312-1234") == "198503121234"
    assert normalise_value("Anna  SVENSSON") == "anna svensson"
    assert "anna svensson" in tokens("('Anna Svensson', 45)")


def _index() -> SourceIndex:
    return SourceIndex.build(KEY, [Table("patients", COLUMNS, ROWS)])


def test_source_index_keeps_no_raw_values():
    index = _index()
    held = repr(vars(index)).lower()
    for r in ROWS[:50]:
        assert r[1].lower() not in held and r[2] not in held


def test_source_match_thresholds():
    index = _index()
    five = index.scan_text(_csv(COLUMNS, ROWS[:5]).decode())
    six = index.scan_text(_csv(COLUMNS, ROWS[:6]).decode())
    assert five.rows == 5 and worst(check_source(five, RULES)) == "review"
    assert six.rows == 6 and worst(check_source(six, RULES)) == "block"
    evidence = check_source(six, RULES)[0].evidence
    assert evidence.startswith("6 rows of patients matched (columns ")
    assert index.scan_text("the cohort had 200 patients, mean age 54.2").rows == 0


def test_source_match_forms():
    index = _index()
    rows = ROWS[10:12]
    for text in [repr(rows), json.dumps([list(r) for r in rows]), "\n".join(map(str, rows)),
                 _csv(COLUMNS, rows).decode().upper()]:  # fmt: skip
        assert index.scan_text(text).rows == 2, text
    assert index.match(tokens(repr(rows))).rows == 2


def test_quasi_identifier_tuple():
    index = _index()
    lines = "\n".join(f"{r[3]};{r[4]};{r[5]};{r[7]}" for r in ROWS[:20])
    match = index.scan_text(lines)
    assert match.tables["patients"].tuple_rows >= 15


def test_encodings_recursive():
    inner = base64.b64encode(gzip.compress(b"hello world, this is text", mtime=0)).decode()
    decoded, opaque = find_encoded(f"x {base64.b64encode(inner.encode()).decode()} y", RULES)
    assert any(d.text and "hello world" in d.text for d in decoded)
    assert any(d.depth == 2 for d in decoded)
    decoded, opaque = find_encoded(base64.b64encode(bytes(range(256)) * 2).decode(), RULES)
    assert not [d for d in decoded if d.text] and opaque
    assert find_encoded("commit 9fceb02d0ae598e95dc970b09f3b2e4d7a1b1c9e", RULES) == ([], [])


def test_small_counts():
    ok = parse_table("diagnosis,n\nAsthma,20\nCOPD,10\nMigraine,15\n", "csv")
    small = parse_table("diagnosis,n\nAsthma,3\n", "csv")
    unrounded = parse_table("diagnosis,n\nAsthma,23\n", "csv")
    assert check_sdc(ok, RULES, counts=True) == []
    assert worst(check_sdc(small, RULES, counts=True)) == "review"
    assert worst(check_sdc(unrounded, RULES, counts=True)) == "review"


def test_check_line_and_redact_log():
    index = _index()
    assert check_line("epoch 3 loss=0.123", index, RULES) is None
    found = check_line(repr(ROWS[4]), index, RULES)
    assert found is not None and found.check == "source-match"
    assert ROWS[4][1] not in found.evidence
    log = "start\n" + "".join(f"{r!r}\n" for r in ROWS[:3]) + "done\n"
    redacted, findings = redact_log(log, index, RULES)
    assert redacted.splitlines() == ["start", *[marker("source-match")] * 3, "done"]
    assert worst(findings) == "review"
