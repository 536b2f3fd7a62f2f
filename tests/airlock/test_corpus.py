"""The corpus through check_outputs: every attempt is held or withheld, dumps of more than five
rows are withheld, every legitimate output passes, and no evidence quotes the data."""

from __future__ import annotations

import pytest

from secd_airlock.checks import check_outputs
from tests.airlock.conftest import CASES
from tests.airlock.make_corpus import Case

EXFIL = [c for c in CASES if c.category == "exfil"]
LEGIT = [c for c in CASES if c.category == "legit"]


def test_corpus_size():
    assert len(EXFIL) >= 20
    assert len(LEGIT) >= 10


def _evidence(report) -> list[str]:
    found = [f.evidence for r in report.files for f in r.findings]
    return found + [f.evidence for f in (*report.log_findings, *report.run_findings)]


@pytest.mark.parametrize("case", EXFIL, ids=[c.name for c in EXFIL])
def test_exfiltration_is_caught(case: Case, index, rules):
    report = check_outputs(case.files, case.log, index, rules)
    if case.expect == "block":
        assert report.verdict == "block", _evidence(report)
    else:
        assert report.verdict in ("review", "block"), _evidence(report)


@pytest.mark.parametrize("case", LEGIT, ids=[c.name for c in LEGIT])
def test_legitimate_output_passes(case: Case, index, rules):
    report = check_outputs(case.files, case.log, index, rules)
    assert report.verdict == "pass", _evidence(report)
    assert report.redacted_log == case.log


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_evidence_never_quotes_the_data(case: Case, index, rules, raw_values):
    report = check_outputs(case.files, case.log, index, rules)
    for evidence in _evidence(report):
        folded = evidence.lower()
        for value in raw_values:
            assert value.lower() not in folded, (case.name, evidence)


def test_redacted_log_holds_no_row(index, rules, raw_values):
    for case in EXFIL:
        if not case.log:
            continue
        redacted = check_outputs([], case.log, index, rules).redacted_log.decode()
        assert "[secd airlock: line withheld (" in redacted, case.name
        for value in raw_values:
            if len(value) >= 10:  # personnummer and full names
                assert value not in redacted, case.name
