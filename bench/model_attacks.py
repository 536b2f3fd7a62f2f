"""The model checks' figures for bench/disclosure.py: the model corpus
(tests/airlock/disclosure_corpus/models/make_models.py, made in the model environment) through
secd_airlock.checks.models.check_model against its synthetic 500-row patients table.

    python bench/model_attacks.py [--repeats N]

Prints each model's verdict, the attacks' seconds and the environment's build time; the last
line is `model_recall=<held / disclosive> model_benign_pass_rate=<passed / benign>
attack_s_p50=<median seconds of one model's attacks, process start included>`.
`figures()` is what bench/disclosure.py's model hook calls.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from secd_airlock.checks import Rules, Table, sniff
from secd_airlock.checks.models import check_model
from secd_airlock.modelenv import ModelEnvironment

ROOT = Path(__file__).resolve().parent.parent
MAKE_MODELS = ROOT / "tests" / "airlock" / "disclosure_corpus" / "models" / "make_models.py"
ENV_ROOT = Path(
    os.environ.get("SECD_MODEL_ENV_CACHE", Path.home() / ".cache" / "secd" / "model-env")
)


@dataclass(frozen=True)
class Figures:
    """Held disclosive models, passed benign ones, and each attack's seconds."""

    disclosive: int
    held: int
    benign: int
    passed: int
    attack_s: list[float]
    build_s: float | None

    @property
    def attack_s_p50(self) -> float:
        """Median seconds of one model's attacks (nan when none ran)."""
        return statistics.median(self.attack_s) if self.attack_s else float("nan")


def _value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def figures(repeats: int = 1, verbose: bool = True) -> Figures:
    """Build (or reuse) the model environment, make the corpus, check every model."""
    env = ModelEnvironment(ENV_ROOT, timeout_s=300)
    started = time.monotonic()
    python = env.python()
    build_s = time.monotonic() - started if env.build_s is not None else None
    with tempfile.TemporaryDirectory(prefix="secd-bench-models-") as tmp:
        out = Path(tmp)
        subprocess.run([str(python), "-I", str(MAKE_MODELS), tmp], check=True, timeout=300)
        expected = json.loads((out / "expected.json").read_text())
        with open(out / "patients.csv") as f:
            header, *rows = list(csv.reader(f))
        table = Table("patients", header, [tuple(_value(v) for v in r) for r in rows])
        disclosive = held = benign = passed = 0
        seconds: list[float] = []
        for name, allowed in sorted(expected.items()):
            data = (out / name).read_bytes()
            for _ in range(repeats):
                report = check_model(data, [table], Rules(), env, sniff(data))
                if report.figures:
                    seconds.append(report.seconds)
            wc = report.figures.get("worst_case", {})
            auc = f"auc={wc['auc']:.3f}" if "auc" in wc else ""
            if verbose:
                print(
                    f"model {name:18} expect {'|'.join(allowed):12} got {report.verdict:6} "
                    f"{report.seconds:6.2f} s {auc}"
                )
            if allowed == ["pass"]:
                benign += 1
                passed += report.verdict == "pass"
            else:
                disclosive += 1
                held += report.verdict != "pass"
    return Figures(disclosive, held, benign, passed, seconds, build_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = figures(args.repeats)
    build = f"{result.build_s:.1f} s" if result.build_s is not None else "reused"
    print(f"model environment: {build} ({ENV_ROOT})")
    print(
        f"model_recall={result.held / result.disclosive:.3f} "
        f"model_benign_pass_rate={result.passed / max(result.benign, 1):.3f} "
        f"attack_s_p50={result.attack_s_p50:.2f}"
    )


if __name__ == "__main__":
    main()
