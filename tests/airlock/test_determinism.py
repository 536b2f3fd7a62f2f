"""The checks say the same in every process: their evidence does not depend on Python's hash
seed (set order). The quasi-identifier tuple search stops at a budget of combinations, and it
once stopped at a seed-dependent place: one corpus case reported 9 matched rows under one seed
and 10 under another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from secd_airlock.checks import Rules, SourceIndex, check_outputs
from tests.airlock.make_corpus import KEY, cases, patients_table

rules = Rules()
index = SourceIndex.build(KEY, [patients_table()], rules)
for case in cases():
    report = check_outputs(case.files, case.log, index, rules)
    for r in report.files:
        for f in r.findings:
            print(case.name, r.name, f.check, f.verdict, f.evidence)
    for f in report.log_findings:
        print(case.name, "log", f.check, f.verdict, f.evidence)
"""


def _evidence(seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
        check=True, timeout=300,
    ).stdout  # fmt: skip


def test_the_corpus_evidence_is_the_same_under_any_hash_seed() -> None:
    first = _evidence(1)
    assert first.count("\n") > 100  # the corpus was checked, with findings
    for seed in (2, 3):
        assert _evidence(seed) == first
