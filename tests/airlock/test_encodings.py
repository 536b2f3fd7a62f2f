"""Encodings beyond base64 and hex: the dump base32- or base85-encoded in a text file is decoded
and matched like the dump itself (both once went through as plain text)."""

from __future__ import annotations

import base64

import pytest

from secd_airlock.checks import OutputFile, check_file
from secd_airlock.checks.encodings import find_encoded
from tests.airlock.make_corpus import COLUMNS, ROWS, _csv

DUMP = _csv(COLUMNS, ROWS[:30])


@pytest.mark.parametrize(
    ("layer", "encoded"),
    [
        ("base32", base64.b32encode(DUMP)),
        ("base32", base64.b32encode(DUMP).rstrip(b"=")),
        ("base85", base64.b85encode(DUMP)),
    ],
)
def test_a_dump_in_base32_or_base85_is_decoded_and_blocked(layer, encoded, index, rules):
    text = b"Notes for the next meeting.\n" + encoded + b"\n"
    decoded, _ = find_encoded(text.decode(), rules)
    assert [d.layers for d in decoded] == [(layer,)]
    assert decoded[0].text == DUMP.decode()
    report = check_file(OutputFile("notes.txt", text, "text"), index, rules)
    assert report.verdict == "block"
    assert any(f.check == "source-match" and f.verdict == "block" for f in report.findings)


def test_prose_and_urls_are_no_base85(rules):
    text = (
        "See https://example.org/a/very/long/path/to/the/report?with=query&and=more#anchor for "
        "details; the model (AUC 0.81, n=400) was fit with lr=1e-3 and batch_size=64.\n"
    )
    assert find_encoded(text, rules) == ([], [])
