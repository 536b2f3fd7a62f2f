"""Models (kind `model`): only skops files of a small list of scikit-learn types, and what the
attacks on them say.

A pickle (or joblib file) is code that runs when it is loaded, at review or anywhere after, so
it is blocked whatever its name; nothing in the airlock ever unpickles researcher content. A
skops file is read here as data (its schema.json): every type it names must be in
ALLOWED_TYPES, and no member may be a pickle (a numpy array of objects is one). The model is
then loaded, with exactly those types trusted, only in the model environment's own process
(secd_airlock.modelenv), which runs secd_airlock.model_attacks against the granted table and
returns figures; `attack_findings` turns them into verdicts with the figures as evidence.
LiRA, dearer and run only when an officer asks for it on a held model, is `check_lira`.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .base import Finding, Rules, Verdict, count_words, worst
from .source import Table

NAME = "model"
VERSION = 1

# Every type a released model may name: scikit-learn classifiers (and the parts they are made
# of), two scalers, Pipeline, numpy's arrays and scalars, and JSON's types. Anything else
# (a function, a custom class, a transformer that calls code) is blocked.
ALLOWED_TYPES = frozenset(
    {
        "builtins.bool",
        "builtins.dict",
        "builtins.float",
        "builtins.int",
        "builtins.list",
        "builtins.NoneType",
        "builtins.str",
        "builtins.tuple",
        "numpy.bool_",
        "numpy.dtype",
        "numpy.float32",
        "numpy.float64",
        "numpy.int32",
        "numpy.int64",
        "numpy.ndarray",
        "numpy.random.mtrand.RandomState",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.naive_bayes.GaussianNB",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._classes.ExtraTreeClassifier",
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.dummy.DummyClassifier",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss._loss.CyHalfMultinomialLoss",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.svm._classes.SVC",
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn.preprocessing._label.LabelBinarizer",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._data.MinMaxScaler",
        "sklearn.pipeline.Pipeline",
    }
)
# skops' node kinds that rebuild data; a FunctionNode, MethodNode, OperatorFuncNode,
# PartialNode... names code to call and is never allowed.
_DATA_LOADERS = frozenset(
    {
        "DictNode",
        "JsonNode",
        "ListNode",
        "LossNode",
        "NdArrayNode",
        "ObjectNode",
        "RandomStateNode",
        "TreeNode",
        "TupleNode",
        "TypeNode",
    }
)
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,60}(\.[A-Za-z_][A-Za-z0-9_]{0,60}){0,8}")
_MAX_NAMED = 6
# What a granted table may offer as the model's target: a column with a few distinct values.
MAX_TARGET_VALUES = 50


class Attacker(Protocol):
    """Runs the model attacks (secd_airlock.modelenv.ModelEnvironment is the real one)."""

    def attack(
        self, model: bytes, data: dict[str, Any] | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        """The figures of secd_airlock.model_attacks for `model` against `data`."""
        ...


@dataclass(frozen=True)
class ModelReport:
    """The model checks' word on one model: findings (evidence in figures), the figures the
    attacks returned, and how long the attacks took."""

    findings: tuple[Finding, ...]
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> Verdict:
        """The strictest verdict of the findings."""
        return worst(self.findings)


def pickle_protocol(data: bytes) -> int | None:
    """The pickle protocol when `data` is a pickle (or a joblib file, compressed with zlib or
    not), read with pickletools' disassembler, which never runs the pickle; None otherwise."""
    candidates = [data]
    if data[:1] == b"\x78":  # joblib's zlib compression
        try:
            candidates.append(zlib.decompressobj().decompress(data[:65536], 65536))
        except zlib.error:
            pass
    for body in candidates:
        if len(body) >= 2 and body[0] == 0x80 and 2 <= body[1] <= 5:
            return body[1]
        protocol = _text_pickle(body[:65536])
        if protocol is not None:
            return protocol
    return None


def _text_pickle(body: bytes) -> int | None:
    """Protocol 0 or 1 pickles (no header): when the opcodes read cleanly up to STOP."""
    if not body or body[:1] not in b"(cdlI}]SVFNK.0123456789LTUGJMhqjpgrsabet":
        return None
    try:
        ops = list(_ops(body))
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    if not ops or ops[-1] != "STOP" or len(ops) < 2:
        return None
    return 1 if any(op in ("EMPTY_DICT", "BINPUT", "BININT", "BINUNICODE") for op in ops) else 0


def _ops(body: bytes) -> Iterator[str]:
    for opcode, _arg, _pos in pickletools.genops(body):
        yield opcode.name
        if opcode.name == "STOP":
            return


def skops_schema(data: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """schema.json of a skops file and the names of its members that are pickles."""
    pickles = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
        for info in archive.infolist():
            if info.filename == "schema.json":
                continue
            with archive.open(info) as member:
                head = member.read(512)
            if pickle_protocol(head) is not None or _npy_holds_objects(head):
                pickles.append(info.filename)
    return (schema if isinstance(schema, dict) else None), pickles


def _npy_holds_objects(head: bytes) -> bool:
    """A .npy array of Python objects is stored as a pickle."""
    return head.startswith(b"\x93NUMPY") and b"'|O'" in head[:256]


def skops_types(schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Every type (module.class, or module.function for code) a skops schema names, and every
    node kind (skops loader) it uses."""
    types: set[str] = set()
    loaders: set[str] = set()

    def walk(node: object, depth: int) -> None:
        if depth > 200:
            raise ValueError("the skops schema nests deeper than 200 levels")
        if isinstance(node, dict):
            module, cls = node.get("__module__"), node.get("__class__")
            if isinstance(module, str) and isinstance(cls, str):
                types.add(f"{module}.{cls}")
                loaders.add(str(node.get("__loader__", "")))
            for value in node.values():
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1)

    walk(schema, 0)
    return types, loaders


def _named(names: Iterable[str]) -> str:
    """Type names for evidence: only names that read as dotted identifiers (a type name is the
    researcher's text and could carry data), at most a few."""
    names = sorted(names)
    shown = [n for n in names if _TYPE_NAME.fullmatch(n)][:_MAX_NAMED]
    rest = len(names) - len(shown)
    text = ", ".join(shown)
    if rest:
        text += f"{' and ' if text else ''}{count_words(rest, 'other')}"
    return text


def check_format(data: bytes, detected: str) -> tuple[list[Finding], dict[str, Any] | None]:
    """Whether a model file is a skops file of allowed types only, without loading it; the
    skops schema when it is."""
    protocol = pickle_protocol(data)
    if protocol is not None:
        return [
            Finding(
                NAME,
                VERSION,
                "block",
                f"a pickle (protocol {protocol}): a pickle or joblib file is code that runs "
                "when it is loaded; save the model with skops.io.dump",
            )
        ], None
    if detected != "skops":
        return [
            Finding(
                NAME,
                VERSION,
                "block",
                f"content is {detected}, not a skops file: save the model with skops.io.dump",
            )
        ], None
    try:
        schema, pickles = skops_schema(data)
        if schema is None:
            raise ValueError("schema.json is not an object")
        types, loaders = skops_types(schema)
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, RecursionError) as exc:
        return [
            Finding(NAME, VERSION, "block", f"the skops file cannot be read: {type(exc).__name__}")
        ], None
    findings = []
    if pickles:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "block",
                f"{count_words(len(pickles), 'member')} of the skops file "
                f"{'is a pickle' if len(pickles) == 1 else 'are pickles'} (arrays of objects)",
            )
        )
    refused = types - ALLOWED_TYPES
    if refused:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "block",
                f"the model names types outside the airlock's list: {_named(refused)}; "
                "only plain scikit-learn classifiers, scalers and Pipeline are released",
            )
        )
    code = loaders - _DATA_LOADERS
    if code:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "block",
                f"the model holds code references (skops {_named(code)}): a released model "
                "may only hold data",
            )
        )
    return findings, (schema if not findings else None)


def feature_names(schema: dict[str, Any]) -> list[str] | None:
    """The column names the model was fitted on (scikit-learn's feature_names_in_, set when it
    was fitted on a DataFrame): the first found, depth first (a Pipeline's first step)."""
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            content = node.get("content")
            if isinstance(content, dict) and "feature_names_in_" in content:
                names = content["feature_names_in_"]
                values = names.get("content") if isinstance(names, dict) else None
                if isinstance(values, list):
                    out = []
                    for value in values:
                        text = value.get("content") if isinstance(value, dict) else None
                        try:
                            out.append(str(json.loads(text)) if isinstance(text, str) else "")
                        except ValueError:
                            out.append(text or "")
                    return out
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None


def _label(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def table_data(
    features: list[str], tables: Sequence[Table], rules: Rules
) -> tuple[dict[str, Any] | None, str]:
    """The rows of the granted table that holds every feature the model names: its feature
    columns as numbers and, as possible targets, its columns of at most MAX_TARGET_VALUES
    distinct values; or None and why no table fits."""
    wanted = [f.lower() for f in features]
    for table in tables:
        lower = [c.lower() for c in table.columns]
        if not all(f in lower for f in wanted):
            continue
        rows = list(table.rows)[: int(rules.model_max_rows)]
        at = [lower.index(f) for f in wanted]
        X: list[list[float | None]] = []
        for row in rows:
            values = [_number(row[i]) for i in at]
            X.append(values)
        non_numeric = [i for i in range(len(at)) if all(r[i] is None for r in X)]
        if non_numeric:
            return None, (
                f"{count_words(len(non_numeric), 'feature')} of the model "
                f"{'is' if len(non_numeric) == 1 else 'are'} not numeric in table {table.name}"
            )
        targets: dict[str, list[object]] = {}
        for i, column in enumerate(table.columns):
            if i in at:
                continue
            labels = [_label(r[i]) for r in rows]
            if 2 <= len({str(v) for v in labels if v is not None}) <= MAX_TARGET_VALUES:
                targets[column] = labels
        if not targets:
            return None, f"table {table.name} has no column that could be the model's target"
        return {
            "table": table.name,
            "X": [[float("nan") if v is None else v for v in r] for r in X],
            "targets": targets,
        }, ""
    return None, "no granted table holds every feature the model was fitted on"


def attack_params(rules: Rules) -> dict[str, Any]:
    """What model_attacks is told: the allowed types, shadow models, seed, leaf threshold."""
    return {
        "allowed_types": sorted(ALLOWED_TYPES),
        "shadows": int(rules.model_shadow_models),
        "seed": 20240601,
        "k_threshold": int(rules.model_min_leaf_rows),
    }


def attack_findings(figures: dict[str, Any], rules: Rules) -> list[Finding]:
    """Verdicts from the attacks' figures; every finding carries its figures as evidence."""
    if figures.get("refused_types"):
        return [
            Finding(
                NAME,
                VERSION,
                "block",
                f"skops names types outside the airlock's list: {_named(figures['refused_types'])}",
            )
        ]
    if "structural" not in figures:
        reason = str(figures.get("error", "no figures came back"))[:200]
        return [Finding(NAME, VERSION, "review", f"the model attacks could not run ({reason})")]
    findings = _structural(figures["structural"], figures.get("rows"), rules)
    worst_case = figures.get("worst_case")
    if worst_case is None:
        why = figures.get("data_error") or "no granted table to attack it with"
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"membership inference did not run: {why}; an officer checks the model",
            )
        )
    elif "error" in worst_case:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"membership inference failed ({str(worst_case['error'])[:200]})",
            )
        )
    else:
        findings.append(_membership(worst_case, rules))
    return findings


def _structural(s: dict[str, Any], rows: int | None, rules: Rules) -> list[Finding]:
    findings = []
    estimator = str(s.get("estimator", "model"))
    params = s.get("params", {})
    stored = s.get("stored_rows")
    if estimator == "KNeighborsClassifier":
        k = params.get("n_neighbors")
        findings.append(
            Finding(
                NAME,
                VERSION,
                "block",
                f"structural: a {k}-nearest-neighbour model stores its "
                f"{count_words(int(stored or 0), 'training row')} verbatim"
                + (" and answers each with its own label" if k == 1 else ""),
            )
        )
    elif stored:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "block",
                f"structural: {estimator} stores {count_words(int(stored), 'training row')} "
                "verbatim (its support vectors)",
            )
        )
    if s.get("unnecessary_risk"):
        shown = ", ".join(
            f"{k}={params[k]}"
            for k in ("max_depth", "min_samples_leaf", "min_samples_split", "n_estimators")
            if k in params and (params[k] is not None or k == "max_depth")
        )
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"structural: {estimator}'s hyperparameters ({shown}) are among the riskiest "
                "fifth in SACRO-ML's study; limit max_depth and raise min_samples_leaf",
            )
        )
    k_anon = s.get("k_anonymity")
    if k_anon is not None and k_anon < rules.model_min_leaf_rows:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"structural: k-anonymity {k_anon}: "
                f"{count_words(int(s.get('small_leaves', 0)), 'leaf', 'leaves')} of "
                f"{int(s.get('leaves', 0)):,} hold fewer than "
                f"{int(rules.model_min_leaf_rows)} rows of the table",
            )
        )
    n_params = int(s.get("n_params", 0))
    if rows and rows - n_params < rules.model_min_dof and not stored:
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"structural: {n_params:,} learned parameters for {rows:,} rows: "
                f"{rows - n_params:,} residual degrees of freedom, "
                f"under {int(rules.model_min_dof)}",
            )
        )
    return findings


def _membership(w: dict[str, Any], rules: Rules) -> Finding:
    auc = float(w["auc"])
    p = float(w.get("p_value", 1.0))
    tpr1, tpr01 = float(w["tpr_at_fpr_0.1"]), float(w["tpr_at_fpr_0.01"])
    verdict: Verdict = "pass"
    if auc >= rules.model_auc_block:
        verdict = "block"
    elif (auc >= rules.model_auc_review and p < 0.05) or tpr01 >= rules.model_tpr_review:
        verdict = "review"
    p_text = "p<0.001" if p < 0.001 else f"p={p:.3f}"
    return Finding(
        NAME,
        VERSION,
        verdict,
        f"worst-case membership inference ({w.get('attack', 'attack')}): AUC {auc:.3f} "
        f"({p_text}), TPR {tpr1:.3f} at FPR 0.1, {tpr01:.3f} at FPR 0.01; "
        f"{int(w.get('shadows', 0))} shadow models on {int(w.get('members', 0)):,} rows, "
        f"train accuracy {float(w.get('shadow_train_acc', 0)):.2f} against "
        f"{float(w.get('shadow_test_acc', 0)):.2f} on the rows held out",
    )


def lira_finding(figures: dict[str, Any], rules: Rules) -> Finding:
    """The verdict of LiRA's figures (model_attacks' "lira"), the figures as evidence; an
    attack that could not run holds the model for review, saying why."""
    lira = figures.get("lira")
    if not isinstance(lira, dict) or "auc" not in lira:
        why = lira.get("error") if isinstance(lira, dict) else figures.get("error")
        reason = str(why or figures.get("data_error") or "no figures came back")[:200]
        return Finding(NAME, VERSION, "review", f"LiRA could not run ({reason})")
    auc, tpr01 = float(lira["auc"]), float(lira["tpr_at_fpr_0.01"])
    verdict: Verdict = "pass"
    if auc >= rules.model_lira_auc_block:
        verdict = "block"
    elif auc >= rules.model_lira_auc_review or tpr01 >= rules.model_lira_tpr_review:
        verdict = "review"
    return Finding(
        NAME,
        VERSION,
        verdict,
        f"LiRA membership inference: AUC {auc:.3f}, TPR {float(lira['tpr_at_fpr_0.1']):.3f} "
        f"at FPR 0.1, {tpr01:.3f} at FPR 0.01, {float(lira['tpr_at_fpr_0.001']):.4f} at "
        f"FPR 0.001; {int(lira.get('shadows', 0))} shadow models on "
        f"{int(lira.get('rows', 0)):,} rows, train accuracy "
        f"{float(lira.get('shadow_train_acc', 0)):.2f} against "
        f"{float(lira.get('shadow_test_acc', 0)):.2f} on the rows held out",
    )


# The figures of LiRA an event may carry (numbers only).
LIRA_FIGURES = (
    "auc",
    "tpr_at_fpr_0.1",
    "tpr_at_fpr_0.01",
    "tpr_at_fpr_0.001",
    "shadows",
    "rows",
    "shadow_train_acc",
    "shadow_test_acc",
)


def check_lira(
    data: bytes,
    tables: Sequence[Table],
    rules: Rules,
    attacker: Attacker | None,
    detected: str = "skops",
) -> ModelReport:
    """LiRA on one held model, when an officer asks: the format checks first (a file that
    fails them is never loaded), then the attack against the granted table that holds the
    model's features. One finding; `figures` holds LiRA's own (LIRA_FIGURES) when it ran."""
    findings, schema = check_format(data, detected)
    if schema is None:
        why = findings[0].evidence if findings else "not a model"
        return ModelReport(
            (Finding(NAME, VERSION, "block", f"LiRA was not run: {why}"),),
        )
    if attacker is None:
        return ModelReport(
            (Finding(NAME, VERSION, "review", "LiRA could not run (no model environment)"),)
        )
    names = feature_names(schema)
    payload, why = (None, "the model does not name its features: fit it on a DataFrame")
    if names:
        payload, why = table_data(names, tables, rules)
    if payload is None:
        return ModelReport((Finding(NAME, VERSION, "review", f"LiRA could not run ({why})"),))
    params = attack_params(rules) | {"attacks": ["lira"], "shadows": int(rules.model_lira_shadows)}
    started = time.monotonic()
    figures = attacker.attack(data, payload, params)
    seconds = time.monotonic() - started
    lira = figures.get("lira")
    kept = (
        {k: float(lira[k]) for k in LIRA_FIGURES if isinstance(lira.get(k), int | float)}
        if isinstance(lira, dict) and "auc" in lira
        else {}
    )
    return ModelReport((lira_finding(figures, rules),), kept, seconds)


def check_model(
    data: bytes,
    tables: Sequence[Table],
    rules: Rules,
    attacker: Attacker | None,
    detected: str = "skops",
) -> ModelReport:
    """Every model check on one file: its format, then (when it may be loaded) the structural
    and worst-case membership attacks against the granted table that holds its features.

    `detected` is what secd_airlock.checks.sniff said the file is. Without an attacker (no model
    environment) the model is held for review: nothing passes unchecked."""
    findings, schema = check_format(data, detected)
    if schema is None:
        return ModelReport(tuple(findings))
    if attacker is None:
        findings.append(
            Finding(NAME, VERSION, "review", "the model attacks did not run (no model environment)")
        )
        return ModelReport(tuple(findings))
    names = feature_names(schema)
    payload, why = (None, "the model does not name its features: fit it on a DataFrame")
    if names:
        payload, why = table_data(names, tables, rules)
    started = time.monotonic()
    figures = attacker.attack(data, payload, attack_params(rules))
    seconds = time.monotonic() - started
    if payload is None and "structural" in figures:
        figures.setdefault("data_error", why)
    if payload is not None:
        figures.setdefault("table", payload["table"])
    findings += attack_findings(figures, rules)
    return ModelReport(tuple(findings), figures, seconds)
