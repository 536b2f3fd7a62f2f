"""Statistical disclosure control (secd_airlock.checks.sdc, differencing, acro): each rule on its
own, the evidence naming cells, and the SDC corpus through every check of the airlock."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from secd_airlock.checks import OutputFile, Rules, SourceIndex, check_outputs, worst
from secd_airlock.checks.acro import acro_claims
from secd_airlock.checks.differencing import ReleasedTable, check_differencing
from secd_airlock.checks.sdc import check_sdc, frequency_table
from secd_airlock.checks.tables import parse_table
from secd_airlock.released import MemoryReleasedTables
from tests.airlock.disclosure_corpus.sdc_cases import SdcCase, sdc_cases
from tests.airlock.make_corpus import ROWS

RULES = Rules()
CASES = sdc_cases()
HELD = [c for c in CASES if c.expect == "held"]
BENIGN = [c for c in CASES if c.expect == "pass"]


def _table(text: str, found: str = "csv"):
    table = parse_table(text, found)
    assert table is not None
    return table


def _checks(findings) -> set[str]:
    return {f.check for f in findings if f.verdict != "pass"}


def test_a_cell_of_3_is_held_naming_the_cell():
    findings = check_sdc(_table("diagnosis,n\nAsthma,3\nCOPD,45\n"), RULES, counts=True)
    assert worst(findings) == "review"
    [threshold] = [f for f in findings if f.check == "sdc-threshold"]
    assert "[diagnosis=Asthma; n] = 3" in threshold.evidence
    assert "COPD" not in threshold.evidence


def test_a_rounded_table_with_cells_of_at_least_10_passes():
    text = b"age_band,F,M\n18-39,35,40\n40-64,55,50\n80+,10,15\n"
    assert check_sdc(_table(text.decode()), RULES, counts=True) == []
    report = check_outputs([OutputFile("bands.csv", text, "counts")], b"", _empty_index(), RULES)
    assert report.verdict == "pass", [f.evidence for r in report.files for f in r.findings]


def _empty_index() -> SourceIndex:
    return SourceIndex.build(b"k" * 32, [], RULES)


def test_crosstab_cells_are_named_by_row_and_column():
    findings = check_sdc(_table("age_band,F,M\n18-39,35,40\n80+,5,15\n"), RULES, counts=True)
    assert "[age_band=80+; F] = 5" in findings[0].evidence


def test_acro_crosstab_index_row_is_not_a_cell():
    table = _table("grant_type,G,N\nyear,,\n2010,15,40\n2011,20,35\n")
    frequencies = frequency_table(table, counts=True)
    assert frequencies is not None
    assert len(frequencies.cells) == 4
    assert {c.row for c in frequencies.cells} == {
        (("grant_type", "2010"),),
        (("grant_type", "2011"),),
    }


def test_rounding_and_zeros_follow_the_site_rules():
    unrounded = _table("diagnosis,n\nAsthma,23\n")
    zero = _table("diagnosis,n\nAsthma,0\nCOPD,20\n")
    assert _checks(check_sdc(unrounded, RULES, counts=True)) == {"sdc-rounding"}
    assert check_sdc(unrounded, dataclasses.replace(RULES, rounding_base=1), counts=True) == []
    assert _checks(check_sdc(zero, RULES, counts=True)) == {"sdc-zeros"}
    assert check_sdc(zero, dataclasses.replace(RULES, zeros_review=False), counts=True) == []
    higher = dataclasses.replace(RULES, small_count_threshold=25)
    assert _checks(check_sdc(_table("diagnosis,n\nAsthma,20\n"), higher, counts=True)) == {
        "sdc-threshold"
    }


def test_kind_table_checks_only_columns_named_like_counts():
    means = _table("diagnosis,mean_age,median_los\nAsthma,3.5,2\n")
    assert check_sdc(means, RULES, counts=False) == []
    with_n = _table("diagnosis,mean_age,n\nAsthma,41.5,6\n")
    assert _checks(check_sdc(with_n, RULES, counts=False)) == {"sdc-threshold"}


def test_a_label_that_may_be_data_is_replaced_by_the_row_position():
    name = ROWS[0][1]
    text = f"name,n\n{name},4\n".encode()
    from secd_airlock.checks import SourceIndex
    from tests.airlock.conftest import KEY, patients_table

    index = SourceIndex.build(KEY, [patients_table()], RULES)
    report = check_outputs([OutputFile("c.csv", text, "counts")], b"", index, RULES)
    evidence = [f.evidence for f in report.files[0].findings if f.check == "sdc-threshold"]
    assert evidence and "[row 1; n] = 4" in evidence[0]
    assert all(part not in evidence[0] for part in name.split())


def _contributors(entries) -> bytes:
    return json.dumps(entries).encode()


def test_magnitude_rules_read_the_contributors_file():
    table = _table("region,total_income\nNorth,1050000\nSouth,900000\n")
    south = {"row": {"region": "South"}, "contributors": [90000] * 10}
    dominated = [{"row": {"region": "North"}, "contributors": [1000000] + [5000] * 10}, south]
    found = check_sdc(table, RULES, counts=False, contributors=_contributors(dominated))
    assert {"sdc-dominance", "sdc-p-ratio"} <= _checks(found)
    dominance = next(f for f in found if f.check == "sdc-dominance")
    assert "[region=North; total_income]" in dominance.evidence
    assert "1000000" not in dominance.evidence and "South" not in dominance.evidence
    balanced = [{"row": {"region": "North"}, "contributors": [105000] * 10}, south]
    assert check_sdc(table, RULES, counts=False, contributors=_contributors(balanced)) == []
    few = [{"row": {"region": "North"}, "contributors": [175000] * 6}, south]
    assert _checks(check_sdc(table, RULES, counts=False, contributors=_contributors(few))) == {
        "sdc-threshold"
    }


def test_contributors_that_do_not_add_up_or_do_not_match_are_held():
    table = _table("region,mean_income\nNorth,30000\nSouth,90000\n")
    means = [
        {"row": {"region": "North"}, "contributors": [30000] * 12},
        {"row": {"region": "South"}, "contributors": [90000] * 10},
    ]
    assert check_sdc(table, RULES, counts=False, contributors=_contributors(means)) == []
    lying = [{"row": {"region": "North"}, "contributors": [1000] * 12}]
    assert _checks(check_sdc(table, RULES, counts=False, contributors=_contributors(lying))) == {
        "sdc-contributors"
    }
    for bad in (
        b"not json",
        b"{}",
        _contributors([{"row": {"region": "West"}, "contributors": [1]}]),
    ):
        found = check_sdc(table, RULES, counts=False, contributors=bad)
        assert "sdc-contributors" in _checks(found), bad


def _released(name: str, text: str, run_id: str, kind="counts") -> ReleasedTable:
    data = text.encode()
    return ReleasedTable(name, hashlib.sha256(data).hexdigest(), run_id, kind, data)


async def test_a_differencing_pair_across_two_runs_is_held_on_the_second():
    rules = dataclasses.replace(RULES, rounding_base=1)
    index = _empty_index()
    store = MemoryReleasedTables()
    first = b"diagnosis,n\nAsthma,120\nCOPD,86\n"
    second = b"diagnosis,n\nAsthma,117\nCOPD,86\n"
    run1 = check_outputs(
        [OutputFile("counts.csv", first, "counts")],
        b"",
        index,
        rules,
        released=await store.tables("study"),
    )
    assert run1.verdict == "pass"
    await store.add("study", _released("counts.csv", first.decode(), "r1"))
    run2 = check_outputs(
        [OutputFile("counts-excl.csv", second, "counts")],
        b"",
        index,
        rules,
        released=await store.tables("study"),
    )
    assert run2.verdict == "review"
    [finding] = [f for f in run2.files[0].findings if f.check == "sdc-differencing"]
    assert hashlib.sha256(first).hexdigest()[:12] in finding.evidence
    assert hashlib.sha256(second).hexdigest()[:12] in finding.evidence
    assert "run r1" in finding.evidence and "[diagnosis=Asthma; n]" in finding.evidence
    assert "COPD" not in finding.evidence
    # Another project's tables are not compared.
    other = check_outputs(
        [OutputFile("counts-excl.csv", second, "counts")],
        b"",
        index,
        rules,
        released=await store.tables("another"),
    )
    assert other.verdict == "pass"


def test_differencing_skips_rounded_cells_and_other_labels():
    new = frequency_table(_table("diagnosis,n\nAsthma,115\n"), counts=True)
    assert new is not None
    rounded = _released("a.csv", "diagnosis,n\nAsthma,120\n", "r1")
    other_labels = _released("b.csv", "sex,n\nAsthma,118\n", "r2")
    assert check_differencing(new, "0" * 64, [rounded, other_labels], RULES) == []
    unrounded = _released("c.csv", "diagnosis,n\nAsthma,118\n", "r3")
    assert check_differencing(new, "0" * 64, [unrounded], RULES)


def test_acro_results_are_a_claim_never_trusted():
    results = {
        "version": "1.0.2",
        "results": {
            "output_0": {
                "status": "pass",
                "command": "acro.crosstab(df.year, df.grant_type)",
                "files": [{"name": "output_0_0.csv", "sdc": {}}],
            }
        },
    }
    [claim] = acro_claims(json.dumps(results).encode()) or []
    assert claim.counts and claim.status == "pass"
    files = [
        OutputFile("acro/output_0_0.csv", b"grant_type,G,N\nyear,,\n2010,15,4\n", "table"),
        OutputFile("acro/results.json", json.dumps(results).encode(), "metrics"),
    ]
    report = check_outputs(files, b"", _empty_index(), RULES)
    assert _checks(report.files[0].findings) == {"sdc-threshold", "sdc-acro"}
    assert acro_claims(b'{"results": []}') is None
    assert acro_claims(b"[1, 2]") is None


@pytest.mark.parametrize("case", HELD, ids=[c.name for c in HELD])
def test_disclosive_corpus_is_held_by_the_expected_check(case: SdcCase, index):
    report = check_outputs(case.files, b"", index, case.rules, released=case.released)
    found = {f.check for r in report.files for f in r.findings if f.verdict != "pass"}
    assert report.verdict in ("review", "block"), case.name
    assert set(case.checks) & found, (case.name, found)


@pytest.mark.parametrize("case", BENIGN, ids=[c.name for c in BENIGN])
def test_benign_corpus_passes(case: SdcCase, index):
    report = check_outputs(case.files, b"", index, case.rules, released=case.released)
    evidence = [f.evidence for r in report.files for f in r.findings]
    assert report.verdict == "pass", (case.name, evidence)


def test_corpus_size():
    assert len(HELD) >= 10 and len(BENIGN) >= 10
