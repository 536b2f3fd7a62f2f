"""Canary rows (secd_airlock.checks.canaries): per-run synthetic patients from a keyed PRNG; any
output or log line carrying their values blocks, naming the run, and never quotes them."""

from __future__ import annotations

import json

import pytest

from secd_airlock.checks import OutputFile, Rules, SourceIndex, check_line, check_outputs, marker
from secd_airlock.checks.canaries import Canaries
from secd_airlock.livelog import filter_chunk
from secd_airlock.service import load_rules
from secd_shared.canaries import canary_key
from secd_shared.config import ConfigError
from secd_shared.luhn import luhn_ok
from tests.airlock.make_corpus import ROWS

KEY = canary_key(b"site-airlock-key-0123456789abcdef")
RUN = "r0123456789abcdef0123"


def _index() -> SourceIndex:
    return SourceIndex.build(b"k" * 32, [])


def _values(canaries: Canaries) -> list[str]:
    found = []
    for row in canaries.rows:
        found += [row.name, row.personnummer, str(row.patient_id), row.personnummer[2:]]
    return found


def test_canaries_are_per_run_and_per_site_and_look_real():
    one = Canaries.for_run(KEY, RUN)
    assert one == Canaries.for_run(KEY, RUN)
    assert len(one.rows) == 3
    assert Canaries.for_run(KEY, "r-another").tokens.isdisjoint(one.tokens)
    assert Canaries.for_run(
        canary_key(b"another-site-key-0123456789abcdef"), RUN
    ).tokens.isdisjoint(one.tokens)
    for row in one.rows:
        digits = row.personnummer.replace("-", "")
        assert luhn_ok(digits[2:]) and len(digits) == 12
    assert len(Canaries.for_run(KEY, RUN, 5).rows) == 5


def test_a_canary_in_a_log_line_blocks_naming_the_run():
    canaries = Canaries.for_run(KEY, RUN)
    row = canaries.rows[0]
    line = f"loaded patient {row.personnummer} ok"
    found = check_line(line, _index(), _rules(), canaries)
    assert found is not None and found.verdict == "block" and RUN in found.evidence
    assert row.personnummer not in found.evidence
    log = f"epoch 1 loss=0.3\n{line}\ndone\n".encode()
    report = check_outputs([], log, _index(), _rules(), canaries=canaries)
    assert report.log_verdict == "block"
    assert report.redacted_log.decode().splitlines() == [
        "epoch 1 loss=0.3",
        marker("canary"),
        "done",
    ]
    shown, withheld = filter_chunk(log, _index(), _rules(), canaries)
    assert withheld == 1 and row.personnummer.encode() not in shown


def _rules() -> Rules:
    return Rules()


def test_a_canary_in_an_output_blocks_in_any_form():
    canaries = Canaries.for_run(KEY, RUN)
    row = canaries.rows[1]
    forms = [
        f"name,n\n{row.name},12\n",
        json.dumps({"pid": row.patient_id}),
        f"see {row.personnummer[2:].replace('-', '')}.\n",
        f"{row.name.upper()}\n",
    ]
    for text in forms:
        report = check_outputs(
            [OutputFile("out.csv", text.encode(), "text")], b"", _index(), canaries=canaries
        )
        [finding] = [f for f in report.files[0].findings if f.check == "canary"]
        assert finding.verdict == "block" and RUN in finding.evidence, text
        assert all(v not in finding.evidence for v in _values(canaries))


def test_ordinary_outputs_and_real_rows_do_not_trip_the_canaries():
    canaries = Canaries.for_run(KEY, RUN)
    text = "diagnosis,n\nAsthma,20\n" + "".join(f"{r[1]} {r[2]} {r[0]}\n" for r in ROWS[:50])
    assert canaries.found([text]) == 0
    # Without canaries (no key) nothing is checked.
    report = check_outputs([OutputFile("a.txt", text.encode(), "text")], b"", _index())
    assert not [f for f in report.files[0].findings if f.check == "canary"]


def test_the_old_rule_names_the_one_switch():
    # The count moved from the airlock's rules to [canaries] rows, which both services read.
    with pytest.raises(ConfigError, match=r"now \[canaries\] rows"):
        load_rules({"canary_rows": 3})
