"""Models (kind model): safe formats only, and the structural and membership attacks.

The attacks run in the real model environment (secd_airlock.modelenv), built on first use
under ~/.cache/secd/model-env (SECD_MODEL_ENV_CACHE moves it): about 3 s and 215 MB with a
package index, then reused. The corpus of models is made by
tests/airlock/disclosure_corpus/models/make_models.py in that environment.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from secd_airlock.checks import OutputFile, Rules, SourceIndex, Table, check_outputs, sniff
from secd_airlock.checks.models import (
    ALLOWED_TYPES,
    check_lira,
    check_model,
    pickle_protocol,
    table_data,
)
from secd_airlock.modelenv import ModelEnvError, ModelEnvironment
from secd_airlock.service import Airlock
from tests.helpers import need

RULES = Rules()
MAKE_MODELS = Path(__file__).parent / "disclosure_corpus" / "models" / "make_models.py"
ENV_ROOT = Path(
    os.environ.get("SECD_MODEL_ENV_CACHE", Path.home() / ".cache" / "secd" / "model-env")
)


class NoAttacks:
    """An attacker that fails the test if called: format checks must stop a model first."""

    def attack(self, model, data, params):
        raise AssertionError("a model that fails the format checks reached the attacks")


class OncePerModel:
    """The real model environment, each (model, table) attacked once per session: the attacks
    cost seconds and several tests ask the same question."""

    def __init__(self, env: ModelEnvironment) -> None:
        self.env = env
        self.done: dict[str, dict] = {}

    def python(self) -> Path:
        return self.env.python()

    def attack(self, model, data, params):
        key = hashlib.sha256(model + json.dumps([data, params], sort_keys=True).encode())
        if key.hexdigest() not in self.done:
            self.done[key.hexdigest()] = self.env.attack(model, data, params)
        return dict(self.done[key.hexdigest()])


@pytest.fixture(scope="session")
def model_env() -> OncePerModel:
    env = ModelEnvironment(ENV_ROOT, timeout_s=120)
    try:
        env.python()
    except ModelEnvError as exc:
        need(False, f"the model environment cannot be built: {exc}")
    return OncePerModel(env)


@pytest.fixture(scope="session")
def corpus(model_env: OncePerModel, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models")
    done = subprocess.run(
        [str(model_env.python()), "-I", str(MAKE_MODELS), str(out)],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return out


def _value(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


@pytest.fixture(scope="session")
def patients(corpus: Path) -> Table:
    with open(corpus / "patients.csv") as f:
        header, *rows = list(csv.reader(f))
    return Table("patients", header, [tuple(_value(v) for v in row) for row in rows])


@pytest.fixture(scope="session")
def attacked(corpus, patients, model_env) -> dict:
    """Each model of the corpus attacked once against the patients table (the attacks cost
    a few seconds each: the tests share them)."""
    names = ("knn1.skops", "deep_tree.skops", "logreg.skops")
    return {name: _check(corpus / name, [patients], model_env) for name in names}


def _check(path: Path, tables: list[Table], attacker) -> object:
    data = path.read_bytes()
    return check_model(data, tables, RULES, attacker, sniff(data))


def _evidence(report, verdict: str | None = None) -> str:
    return "\n".join(f.evidence for f in report.findings if verdict in (None, f.verdict))


def test_one_nearest_neighbour_is_blocked_with_the_attacks_figures(attacked):
    report = attacked["knn1.skops"]
    assert report.verdict == "block"
    blocked = _evidence(report, "block")
    assert "1-nearest-neighbour" in blocked and "400 training rows verbatim" in blocked
    assert "worst-case membership inference" in _evidence(report)
    worst_case = report.figures["worst_case"]
    assert worst_case["auc"] > RULES.model_auc_review, worst_case
    assert f"AUC {worst_case['auc']:.3f}" in _evidence(report)
    assert report.figures["table"] == "patients" and report.figures["target"] == "outcome"
    # Figures only: no patient's value is quoted.
    assert "P1000" not in _evidence(report)


def test_overfit_tree_is_held_with_leaf_and_attack_figures(attacked):
    report = attacked["deep_tree.skops"]
    assert report.verdict in ("review", "block")
    evidence = _evidence(report)
    assert "k-anonymity 1" in evidence
    assert "riskiest fifth" in evidence
    assert report.figures["structural"]["k_anonymity"] < RULES.model_min_leaf_rows
    assert report.figures["worst_case"]["auc"] > RULES.model_auc_review


def test_regularised_logistic_regression_passes(attacked):
    report = attacked["logreg.skops"]
    assert report.verdict == "pass", _evidence(report)
    assert report.figures["worst_case"]["auc"] < RULES.model_auc_review
    assert "AUC" in _evidence(report, "pass")


def test_a_pickle_is_blocked_whatever_its_name_and_never_loaded(corpus, patients):
    for name in ("logreg.pkl", "logreg.joblib"):
        data = (corpus / name).read_bytes()
        for as_name in (name, "model.skops", "model.json"):
            file = OutputFile(as_name, data, "model")
            report = check_model(file.data, [patients], RULES, NoAttacks(), sniff(file.data))
            assert report.verdict == "block", (name, as_name)
            assert "a pickle (protocol" in _evidence(report, "block")
            assert "skops.io.dump" in _evidence(report, "block")
    # Protocols 0 and 1 have no header; pickletools reads them without running them.
    for protocol in (0, 1, 2, 5):
        data = pickle.dumps({"coef": [0.1, 0.2], "intercept": 1}, protocol=protocol)
        assert pickle_protocol(data) is not None, protocol
        report = check_model(data, [patients], RULES, NoAttacks(), sniff(data))
        assert report.verdict == "block"
    # Text that is no pickle is not called one (it is still no skops file).
    assert pickle_protocol(b"age,bmi\n1,2\n") is None
    report = check_model(b"age,bmi\n1,2\n", [patients], RULES, NoAttacks(), "csv")
    assert report.verdict == "block" and "not a skops file" in _evidence(report)


def test_skops_with_an_untrusted_type_is_blocked_naming_it(corpus, patients):
    report = _check(corpus / "untrusted.skops", [patients], NoAttacks())
    assert report.verdict == "block"
    evidence = _evidence(report, "block")
    assert "builtins.eval" in evidence
    assert "FunctionTransformer" in evidence
    assert "builtins.eval" not in ALLOWED_TYPES


def test_skops_holding_a_pickled_array_is_blocked(corpus, patients):
    out = io.BytesIO()
    with zipfile.ZipFile(corpus / "logreg.skops") as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
        dst.writestr("1.npy", b"\x93NUMPY\x01\x00" + bytes([len(header), 0]) + header)
    report = check_model(out.getvalue(), [patients], RULES, NoAttacks())
    assert report.verdict == "block"
    assert "is a pickle (arrays of objects)" in _evidence(report, "block")


def test_without_a_matching_table_or_environment_a_model_is_held(corpus, model_env):
    other = Table("visits", ["visit_id", "clinic"], [(1, "a"), (2, "b")])
    data, why = table_data(["age", "bmi"], [other], RULES)
    assert data is None and "no granted table holds every feature" in why
    # The structural check needs no table: a 1-NN is blocked all the same, and the attack that
    # could not run holds it too.
    report = _check(corpus / "knn1.skops", [other], model_env)
    assert report.verdict == "block"
    assert "membership inference did not run" in _evidence(report, "review")
    report = _check(corpus / "logreg.skops", [other], None)
    assert report.verdict == "review" and "no model environment" in _evidence(report)


def test_the_airlock_runs_the_model_checks_on_model_outputs(corpus, patients, model_env):
    class GrantedTables:
        """Sources' two methods the model checks use, over the corpus's table."""

        def covers(self, database: str) -> bool:
            return database == "clinic"

        async def tables(self, database, names, max_rows):
            return [patients] if "patients" in names else []

    airlock = Airlock(None, None, GrantedTables(), RULES, models=model_env)
    files = [
        (OutputFile("out/knn.skops", (corpus / "knn1.skops").read_bytes(), "model"), "d1"),
        (OutputFile("out/table.csv", b"n,mean_age\n120,54.5\n", "table"), "d2"),
    ]
    index = SourceIndex.build(b"k" * 32, [patients], RULES)
    report = check_outputs([f for f, _ in files], b"", index, RULES)
    issued = SimpleNamespace(database="clinic", granted=["patients"])
    checked = asyncio.run(airlock._check_models(report, files, issued))
    verdicts = {r.name: r.verdict for r in checked.files}
    # The 1-NN passes the checks of check_outputs alone; the model checks block it.
    assert {r.name: r.verdict for r in report.files}["out/knn.skops"] == "pass"
    assert verdicts["out/knn.skops"] == "block"
    table = next(r for r in checked.files if r.name == "out/table.csv")
    assert table == next(r for r in report.files if r.name == "out/table.csv")
    knn = next(r for r in checked.files if r.name == "out/knn.skops")
    assert any(f.check == "model" and "AUC" in f.evidence for f in knn.findings)


def test_a_model_environment_that_cannot_start_holds_the_model(corpus, patients, tmp_path):
    missing = ModelEnvironment(tmp_path, python=tmp_path / "no-such-python")
    report = _check(corpus / "logreg.skops", [patients], missing)
    assert report.verdict == "review"
    assert "the model attacks could not run" in _evidence(report, "review")
    assert "model_python" in _evidence(report, "review")


def _lira(path: Path, tables: list[Table], attacker, rules: Rules = RULES):
    data = path.read_bytes()
    return check_lira(data, tables, rules, attacker, sniff(data))


def test_lira_finds_a_one_nearest_neighbour_and_passes_a_regularised_model(
    corpus, patients, model_env
):
    knn = _lira(corpus / "knn1.skops", [patients], model_env)
    logreg = _lira(corpus / "logreg.skops", [patients], model_env)
    (finding,) = knn.findings
    assert finding.verdict in ("review", "block") and finding.evidence.startswith("LiRA")
    assert knn.figures["auc"] > RULES.model_lira_auc_review, knn.figures
    assert knn.figures["shadows"] == RULES.model_lira_shadows and knn.figures["rows"] == 500
    assert f"AUC {knn.figures['auc']:.3f}" in finding.evidence
    assert logreg.verdict == "pass", logreg.findings
    assert logreg.figures["auc"] < RULES.model_lira_auc_review
    assert logreg.figures["tpr_at_fpr_0.01"] < RULES.model_lira_tpr_review
    assert knn.figures["tpr_at_fpr_0.01"] > logreg.figures["tpr_at_fpr_0.01"]
    # Figures only: every one a number, no patient's value quoted.
    assert all(isinstance(v, float) for v in knn.figures.values())
    assert "P1000" not in finding.evidence


def test_lira_thresholds_are_the_sites_rules(corpus, patients, model_env):
    strict = Rules(model_lira_auc_block=0.0, model_lira_shadows=4)
    report = _lira(corpus / "logreg.skops", [patients], model_env, strict)
    assert report.verdict == "block" and report.figures["shadows"] == 4


def test_lira_never_loads_a_pickle_and_says_why_it_could_not_run(corpus, patients, model_env):
    report = _lira(corpus / "logreg.pkl", [patients], NoAttacks())
    assert report.verdict == "block" and "LiRA was not run: a pickle" in _evidence(report)
    other = Table("visits", ["visit_id", "clinic"], [(1, "a"), (2, "b")])
    report = _lira(corpus / "logreg.skops", [other], NoAttacks())
    assert report.verdict == "review" and "no granted table holds every feature" in _evidence(
        report
    )
    missing = ModelEnvironment(Path("/nonexistent"), python=Path("/nonexistent/python"))
    report = _lira(corpus / "logreg.skops", [patients], missing)
    assert report.verdict == "review" and "LiRA could not run" in _evidence(report)
    assert report.figures == {}
