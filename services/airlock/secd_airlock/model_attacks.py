"""The model attacks, run by the model environment's own Python (secd_airlock.modelenv), never
imported by the airlock itself: scikit-learn and skops live only in that environment.

    <model-env>/bin/python -I model_attacks.py <folder>

The folder (private to the airlock) holds model.skops, params.json and, when a granted table
matched the model's features, data.json; the figures go to stdout as one JSON object. Nothing
here decides a verdict: secd_airlock.checks.models turns the figures into findings.

The attacks follow SACRO-ML's documented methods (sacroml 2.0.1 imports torch and xgboost at
module level, so it cannot run without them; see docs/operator.md):
- structural: what the model's own parameters say (a k-nearest-neighbours model or an SVC
  stores training rows; SACRO-ML's "unnecessary risk" rules for trees and forests), the number
  of learned parameters against the rows (residual degrees of freedom), and for trees the
  k-anonymity of their leaves over the granted table's rows;
- worst-case membership inference: shadow models with the target's own hyperparameters are
  trained on half the table (the attacker knows which half); an attack on their confidence
  vectors (a threshold on the true class's confidence, and SACRO-ML's random-forest attack on
  the sorted vectors) gives the AUC and the true-positive rate at a low false-positive rate;
- LiRA, only when params.json's "attacks" names it (an officer asked): the likelihood-ratio
  attack of Carlini et al. over many shadow models (see `lira`); nothing else runs then.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio  # type: ignore[import-not-found, unused-ignore]
from sklearn.base import clone  # type: ignore[import-not-found, unused-ignore]
from sklearn.ensemble import RandomForestClassifier  # type: ignore[import-not-found, unused-ignore]
from sklearn.metrics import roc_auc_score, roc_curve  # type: ignore[import-not-found, unused-ignore]
from sklearn.model_selection import (  # type: ignore[import-not-found, unused-ignore]
    StratifiedKFold,
    cross_val_predict,
    train_test_split,
)

# SACRO-ML's attack model for the worst-case attack (_DEFAULT_RF_PARAMS).
_ATTACK_RF = {"min_samples_split": 20, "min_samples_leaf": 10, "max_depth": 5}
_PARAMS = (
    "n_neighbors",
    "max_depth",
    "min_samples_leaf",
    "min_samples_split",
    "n_estimators",
    "max_features",
    "bootstrap",
    "C",
    "penalty",
    "alpha",
    "hidden_layer_sizes",
    "kernel",
    "splitter",
)


def _final(model: Any) -> Any:
    """The estimator that predicts: a Pipeline's last step, else the model itself."""
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def _norm(value: Any) -> str:
    """A label as text, so that 1, 1.0 and "1" compare equal."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def _param_count(est: Any) -> int:
    """Learned parameters, counted as SACRO-ML counts them (trees: 2 per split node and
    classes-1 per leaf); instance-based models count every stored value."""
    name = type(est).__name__

    def tree(t: Any, n_classes: int) -> int:
        leaves = int(np.sum(t.children_left == t.children_right))
        return 2 * (int(t.node_count) - leaves) + leaves * max(1, n_classes - 1)

    n_classes = len(getattr(est, "classes_", [0, 1]))
    if hasattr(est, "tree_"):
        return tree(est.tree_, n_classes)
    if name in ("RandomForestClassifier", "ExtraTreesClassifier"):
        return sum(tree(e.tree_, n_classes) for e in est.estimators_)
    if name == "GradientBoostingClassifier":
        return sum(tree(e.tree_, 2) for e in np.ravel(est.estimators_))
    if name == "KNeighborsClassifier":
        return int(np.size(est._fit_X)) + int(np.size(est._y))
    if name == "SVC":
        return int(np.size(est.support_vectors_)) + int(np.size(est.dual_coef_))
    if name == "MLPClassifier":
        return int(sum(w.size for w in est.coefs_) + sum(b.size for b in est.intercepts_))
    total = 0
    for attr in ("coef_", "intercept_", "theta_", "var_", "class_prior_"):
        if hasattr(est, attr):
            total += int(np.size(getattr(est, attr)))
    return total


def _unnecessary_risk(est: Any) -> bool:
    """SACRO-ML's rules for hyperparameters among the riskiest fifth (arXiv:2502.09396)."""
    name = type(est).__name__
    if name == "DecisionTreeClassifier":
        depth = float(est.max_depth) if est.max_depth else 500.0
        leaf, split, feats = est.min_samples_leaf, est.min_samples_split, est.max_features
        best = est.splitter == "best"
        return bool(
            (depth > 7.5 and leaf <= 7.5 and split <= 15)
            or (best and depth > 7.5 and leaf <= 7.5 and split > 15)
            or (best and depth > 7.5 and 7.5 < leaf <= 15 and feats is None)
            or (best and 3.5 < depth <= 7.5 and feats is None and leaf <= 7.5)
            or (not best and depth > 7.5 and leaf <= 7.5 and feats is None)
        )
    if name == "RandomForestClassifier":
        depth = float(est.max_depth) if est.max_depth else 500.0
        n, feats = est.n_estimators, est.max_features
        leaf, split = est.min_samples_leaf, est.min_samples_split
        return bool(
            (depth > 3.5 and n > 35 and feats is not None)
            or (depth > 3.5 and n > 35 and split <= 15 and feats is None and est.bootstrap)
            or (depth > 7.5 and 15 < n <= 35 and leaf <= 15 and not est.bootstrap)
        )
    return False


def structural(model: Any, X: np.ndarray | None, threshold: int) -> dict[str, Any]:
    """What the model's parameters say, and its trees' leaves over the table's rows."""
    est = _final(model)
    name = type(est).__name__
    params = {}
    for key in _PARAMS:
        value = getattr(est, key, None)
        if isinstance(value, bool | int | float | str | type(None) | tuple):
            params[key] = list(value) if isinstance(value, tuple) else value
    out: dict[str, Any] = {
        "estimator": name,
        "params": params,
        "n_params": _param_count(est),
        "n_features": int(getattr(model, "n_features_in_", 0) or 0),
        "n_classes": len(getattr(est, "classes_", [])),
        "unnecessary_risk": _unnecessary_risk(est),
    }
    if name == "KNeighborsClassifier":
        out["stored_rows"] = int(est.n_samples_fit_)
    elif name == "SVC":
        out["stored_rows"] = int(est.support_vectors_.shape[0])
    if X is not None and len(X):
        trees = []
        if hasattr(est, "tree_"):
            trees = [est]
        elif name in ("RandomForestClassifier", "ExtraTreesClassifier"):
            trees = list(est.estimators_)
        if trees:
            Xt = X
            if getattr(model, "steps", None):
                for _, step in model.steps[:-1]:
                    Xt = step.transform(Xt)
            k_min, small, leaves = None, 0, 0
            for t in trees:
                _, counts = np.unique(t.apply(np.asarray(Xt, dtype=np.float32)), return_counts=True)
                k = int(np.min(counts))
                k_min = k if k_min is None else min(k_min, k)
                small += int(np.sum(counts < threshold))
                leaves += len(counts)
            out["k_anonymity"] = k_min
            out["small_leaves"] = small
            out["leaves"] = leaves
    return out


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, at: float) -> float:
    return float(np.interp(at, fpr, tpr))


def _attack_scores(proba: np.ndarray, y_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The threshold attack's score (the true class's confidence) and the attack model's
    features (the sorted confidence vector, the true class's confidence, correct or not)."""
    true_conf = proba[np.arange(len(y_idx)), y_idx]
    correct = (proba.argmax(axis=1) == y_idx).astype(float)
    feats = np.hstack([-np.sort(-proba, axis=1), true_conf[:, None], correct[:, None]])
    return true_conf, feats


def worst_case(model: Any, X: np.ndarray, y: np.ndarray, shadows: int, seed: int) -> dict[str, Any]:
    """Worst-case membership inference over `shadows` shadow models (see the module's doc)."""
    classes = list(_final(model).classes_)
    runs: list[dict[str, Any]] = []
    for rep in range(shadows):
        try:
            mem, out = train_test_split(
                np.arange(len(y)), test_size=0.5, random_state=seed + rep, stratify=y
            )
        except ValueError:
            mem, out = train_test_split(np.arange(len(y)), test_size=0.5, random_state=seed + rep)
        shadow = clone(model)
        shadow.fit(X[mem], y[mem])
        order = {c: i for i, c in enumerate(_final(shadow).classes_)}
        if len(order) != len(classes):
            continue
        idx = np.array([order[v] for v in y])
        p_in = shadow.predict_proba(X[mem])
        p_out = shadow.predict_proba(X[out])
        s_in, f_in = _attack_scores(p_in, idx[mem])
        s_out, f_out = _attack_scores(p_out, idx[out])
        labels = np.r_[np.ones(len(mem)), np.zeros(len(out))]
        threshold_score = np.r_[s_in, s_out]
        attack = RandomForestClassifier(n_estimators=30, random_state=seed, **_ATTACK_RF)
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        rf_score = cross_val_predict(
            attack, np.vstack([f_in, f_out]), labels, cv=folds, method="predict_proba"
        )[:, 1]
        best: dict[str, Any] | None = None
        for name, score in (("threshold", threshold_score), ("attack-model", rf_score)):
            auc = float(roc_auc_score(labels, score))
            fpr, tpr, _ = roc_curve(labels, score)
            result: dict[str, Any] = {
                "attack": name,
                "auc": auc,
                "tpr_at_fpr_0.1": _tpr_at(fpr, tpr, 0.1),
                "tpr_at_fpr_0.01": _tpr_at(fpr, tpr, 0.01),
                "members": len(mem),
                "non_members": len(out),
                "shadow_train_acc": float(np.mean(p_in.argmax(1) == idx[mem])),
                "shadow_test_acc": float(np.mean(p_out.argmax(1) == idx[out])),
            }
            if best is None or auc > best["auc"]:
                best = result
        assert best is not None
        runs.append(best)
    if not runs:
        return {"error": "no shadow model saw every class of the target"}
    runs.sort(key=lambda r: r["auc"])
    median: dict[str, Any] = dict(runs[len(runs) // 2])
    n1, n2 = median["members"], median["non_members"]
    # One-sided p-value of the AUC against chance (Mann-Whitney's normal approximation).
    sd = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
    median["p_value"] = 0.5 * math.erfc((median["auc"] - 0.5) / sd / math.sqrt(2))
    median["shadows"] = len(runs)
    median["auc_max"] = runs[-1]["auc"]
    return median


def _true_class_logit(model: Any, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's statistic: the logit of the confidence in each row's true class (0 when the
    model never saw the class), clipped so that a certain answer stays finite."""
    order = {c: i for i, c in enumerate(_final(model).classes_)}
    proba = model.predict_proba(X)
    p = np.array([proba[i, order[v]] if v in order else 0.0 for i, v in enumerate(y)], dtype=float)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p) - np.log1p(-p))


def lira(model: Any, X: np.ndarray, y: np.ndarray, shadows: int, seed: int) -> dict[str, Any]:
    """The likelihood-ratio attack (LiRA, Carlini et al. 2022, as SACRO-ML documents it).

    `shadows` models with the target's hyperparameters are trained on random halves of the
    table, each row a member of exactly half of them. Each model in turn is the target: for
    every row, the others' logits of its true class when it was in their training half and
    when it was not give two Gaussians (per-row means, one variance each over all rows: the
    fixed-variance form Carlini et al. advise below 64 shadow models), and the score is the
    log likelihood ratio of the target's own logit. The figures pool every target's rows:
    AUC and the true-positive rate at false-positive rates 0.1, 0.01 and 0.001.
    """
    n, m = len(y), int(shadows)
    if m < 4:
        return {"error": "LiRA needs at least 4 shadow models"}
    rng = np.random.default_rng(seed)
    keys = rng.random((m, n))
    # Strictly below the median of an even count: exactly half the models hold each row.
    member = keys < np.median(keys, axis=0)
    logits = np.empty((m, n))
    train_acc, test_acc = [], []
    for k in range(m):
        shadow = clone(model)
        shadow.fit(X[member[k]], y[member[k]])
        logits[k] = _true_class_logit(shadow, X, y)
        right = shadow.predict(X) == y
        train_acc.append(float(np.mean(right[member[k]])))
        test_acc.append(float(np.mean(right[~member[k]])))
    scores, labels = [], []
    for t in range(m):
        others = np.arange(m) != t
        phi, inside = logits[others], member[others]
        n_in, n_out = inside.sum(axis=0), (~inside).sum(axis=0)
        mu_in = np.where(inside, phi, 0.0).sum(axis=0) / np.maximum(n_in, 1)
        mu_out = np.where(~inside, phi, 0.0).sum(axis=0) / np.maximum(n_out, 1)
        sd_in = max(float(np.sqrt(np.mean((phi - mu_in)[inside] ** 2))), 1e-3)
        sd_out = max(float(np.sqrt(np.mean((phi - mu_out)[~inside] ** 2))), 1e-3)
        z_in, z_out = (logits[t] - mu_in) / sd_in, (logits[t] - mu_out) / sd_out
        scores.append(0.5 * (z_out**2 - z_in**2) + math.log(sd_out / sd_in))
        labels.append(member[t])
    score, label = np.concatenate(scores), np.concatenate(labels).astype(int)
    fpr, tpr, _ = roc_curve(label, score)
    return {
        "attack": "lira",
        "auc": float(roc_auc_score(label, score)),
        "tpr_at_fpr_0.1": _tpr_at(fpr, tpr, 0.1),
        "tpr_at_fpr_0.01": _tpr_at(fpr, tpr, 0.01),
        "tpr_at_fpr_0.001": _tpr_at(fpr, tpr, 0.001),
        "shadows": m,
        "rows": n,
        "shadow_train_acc": float(np.mean(train_acc)),
        "shadow_test_acc": float(np.mean(test_acc)),
    }


def _data(data: dict[str, Any], model: Any) -> tuple[np.ndarray, np.ndarray, str] | str:
    """The features and the target column chosen among the candidates, or why none fits."""
    classes = {_norm(c) for c in _final(model).classes_}
    best, best_overlap = None, 0
    for column, values in data["targets"].items():
        seen = {_norm(v) for v in values if v is not None}
        if seen and seen <= classes and len(seen) > best_overlap:
            best, best_overlap = column, len(seen)
    if best is None:
        return "no column of the table holds the model's classes"
    X = np.array(data["X"], dtype=float)
    labels = np.array([_norm(v) if v is not None else "" for v in data["targets"][best]])
    keep = ~np.isnan(X).any(axis=1) & (labels != "")
    by_text = {_norm(c): c for c in _final(model).classes_}
    y = np.array([by_text[v] for v in labels[keep]])
    return X[keep], y, best


def main(folder: Path) -> dict[str, Any]:
    started = time.monotonic()
    params = json.loads((folder / "params.json").read_text())
    path = folder / "model.skops"
    untrusted = set(sio.get_untrusted_types(file=path))
    refused = sorted(untrusted - set(params["allowed_types"]))
    if refused:
        return {"refused_types": refused}
    model = sio.load(path, trusted=sorted(untrusted))
    if not hasattr(model, "predict_proba"):
        return {"error": f"{type(_final(model)).__name__} gives no class probabilities"}
    result: dict[str, Any] = {}
    X = y = None
    data_path = folder / "data.json"
    if data_path.exists():
        chosen = _data(json.loads(data_path.read_text()), model)
        if isinstance(chosen, str):
            result["data_error"] = chosen
        else:
            X, y, result["target"] = chosen
            result["rows"] = len(y)
    if "lira" in params.get("attacks", ()):
        # Asked for by an officer: LiRA alone, against the table (secd_airlock.checks.models).
        if X is None or y is None:
            result["lira"] = {"error": result.get("data_error", "no granted table to attack")}
        elif len(np.unique(y)) < 2 or len(y) < 20:
            result["lira"] = {"error": "too few rows or classes in the table to attack"}
        else:
            try:
                result["lira"] = lira(model, X, y, int(params["shadows"]), int(params["seed"]))
            except ValueError as exc:
                result["lira"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        result["seconds"] = round(time.monotonic() - started, 3)
        return result
    result["structural"] = structural(model, X, int(params["k_threshold"]))
    if X is not None and y is not None:
        if len(np.unique(y)) < 2 or len(y) < 20:
            result["data_error"] = "too few rows or classes in the table to attack"
        else:
            try:
                result["worst_case"] = worst_case(
                    model, X, y, int(params["shadows"]), int(params["seed"])
                )
            except ValueError as exc:
                result["worst_case"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            result["table_accuracy"] = float(np.mean(model.predict(X) == y))
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    try:
        print(json.dumps(main(Path(sys.argv[1]))))
    except Exception as exc:  # the airlock reads the reason; the traceback stays here
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc)[:300]}"}))
