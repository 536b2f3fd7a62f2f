"""The model corpus, made on demand (models are binary: none is committed).

Run with the model environment's Python (it has scikit-learn and skops; the tests' own
environment has neither):

    <model-env>/bin/python tests/airlock/disclosure_corpus/models/make_models.py OUT

OUT receives patients.csv (a synthetic 500-row table, fixed seed: features age, bmi, sbp,
chol, smoker; a noisy binary outcome; a patient id) and, each trained on its first 400 rows:

    knn1.skops          1-nearest-neighbour: stores its rows, must be blocked
    deep_tree.skops     an unbounded decision tree (min_samples_leaf=1): review or block
    logreg.skops        a regularised logistic regression (C=0.1): passes
    logreg.pkl          the same model pickled: blocked (never loaded)
    logreg.joblib       the same model with joblib, compressed: blocked (never loaded)
    untrusted.skops     a Pipeline whose FunctionTransformer calls builtins.eval: blocked

EXPECTED (below) is what the airlock must say of each; it is written to OUT/expected.json for
bench/model_attacks.py, which cannot import this module (no scikit-learn there).
"""

from __future__ import annotations

import csv
import json
import pickle
import sys
from pathlib import Path

import joblib
import numpy as np
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

SEED = 12
ROWS = 500
TRAIN = 400
FEATURES = ["age", "bmi", "sbp", "chol", "smoker"]
EXPECTED = {
    "knn1.skops": {"block"},
    "deep_tree.skops": {"review", "block"},
    "logreg.skops": {"pass"},
    "logreg.pkl": {"block"},
    "logreg.joblib": {"block"},
    "untrusted.skops": {"block"},
}


def table(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    age = rng.integers(20, 90, ROWS)
    bmi = np.round(rng.normal(27, 4, ROWS), 1)
    sbp = np.round(rng.normal(130, 15, ROWS))
    chol = np.round(rng.normal(5.2, 1.0, ROWS), 2)
    smoker = rng.integers(0, 2, ROWS)
    logit = 0.04 * (age - 55) + 0.08 * (bmi - 27) + 0.02 * (sbp - 130) + 0.7 * smoker - 0.3
    outcome = (rng.random(ROWS) < 1 / (1 + np.exp(-logit))).astype(int)
    return np.column_stack([age, bmi, sbp, chol, smoker]).astype(float), outcome


def fitted(model, X: np.ndarray, y: np.ndarray):
    model.fit(X, y)
    # As if fitted on a DataFrame of the table (this environment has no pandas).
    model.feature_names_in_ = np.array(FEATURES, dtype=object)
    return model


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    X, y = table(rng)
    with open(out / "patients.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", *FEATURES, "outcome"])
        for i in range(ROWS):
            writer.writerow([f"P{100000 + i}", *(f"{v:g}" for v in X[i]), int(y[i])])
    Xt, yt = X[:TRAIN], y[:TRAIN]
    logreg = fitted(LogisticRegression(C=0.1, max_iter=1000), Xt, yt)
    sio.dump(fitted(KNeighborsClassifier(n_neighbors=1), Xt, yt), out / "knn1.skops")
    sio.dump(fitted(DecisionTreeClassifier(random_state=0), Xt, yt), out / "deep_tree.skops")
    sio.dump(logreg, out / "logreg.skops")
    (out / "logreg.pkl").write_bytes(pickle.dumps(logreg))
    joblib.dump(logreg, out / "logreg.joblib", compress=3)
    sio.dump(
        make_pipeline(FunctionTransformer(eval), LogisticRegression()), out / "untrusted.skops"
    )
    expected = {name: sorted(verdicts) for name, verdicts in EXPECTED.items()}
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
