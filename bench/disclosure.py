"""Disclosure control in the airlock: the SDC corpus, canary rows, and (hooks below) models.

SDC: every case of tests/airlock/disclosure_corpus/sdc/cases.json goes through check_outputs
with the site's default rules (or the case's own), against a SourceIndex of the corpus's
synthetic patients table, with the tables the case's project released before. Each case's
verdict and the checks that held it are printed. sdc_recall is the share of disclosive cases
held (review or block); benign_pass_rate the share of benign cases passed (models' benign cases
join it once the model part fills its hook).

Canaries: --canary-runs runs, each with a log that prints one of its canary rows in one of
several forms among ordinary lines, and an output holding one; canary_recall is the share of
those runs blocked, canary_false_blocks the runs whose ordinary lines were blocked.

Differencing: the benign corpus checked against --released earlier tables of the same project
(copies of the corpus's tables with shifted counts) over the same checks with none:
differencing_overhead_ratio (median of --repeats, one core, this interpreter).

Models (model_recall, attack_s_p50): bench/model_attacks.py runs the model corpus
(tests/airlock/disclosure_corpus/models/) through secd_airlock.checks.models.check_model in the
model environment (built on first use); `model_figures` calls it.

Neighbour replay (`replay_figures`): bench/overhead.py's pipeline_runs on a real stack (NATS,
embedded PostgreSQL, bwrap), --replay-runs trivial runs without replay and then as many with
`replay: true` (each on a stack of its own, in this process); replay_overhead_ratio is the
median push -> results.published with replay over the median without (0 runs: `nan`).

Last line:

    sdc_recall=<held / disclosive> model_recall=<...> benign_pass_rate=<passed / benign>
    attack_s_p50=<...> replay_overhead_ratio=<...>
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.airlock import final_line
from secd_airlock.checks import OutputFile, Rules, SourceIndex, check_outputs
from secd_airlock.checks.canaries import Canaries
from secd_airlock.checks.differencing import ReleasedTable
from secd_shared.canaries import canary_key
from tests.airlock.disclosure_corpus.sdc_cases import SdcCase, sdc_cases
from tests.airlock.make_corpus import KEY, patients_table


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """What the model part measures: held disclosive models, passed benign ones, and the
    median seconds of one model's attacks."""

    disclosive: int
    held: int
    benign: int
    passed: int
    attack_s_p50: float


def model_figures() -> ModelFigures | None:
    """The model checks' part (bench/model_attacks.py): the model corpus through check_model in
    the model environment, built on first use; None (figures `nan`) when it cannot be built."""
    from bench.model_attacks import figures
    from secd_airlock.modelenv import ModelEnvError

    try:
        found = figures()
    except ModelEnvError as exc:
        print(f"models: not measured ({exc})")
        return None
    return ModelFigures(
        found.disclosive, found.held, found.benign, found.passed, found.attack_s_p50
    )


def replay_figures(runs: int) -> float:
    """The median wall time push -> published of the trivial job with neighbour replay over
    the same without it (bench/overhead.py's pipeline_runs); `nan` for 0 runs."""
    if runs <= 0:
        return math.nan
    import asyncio
    import tempfile

    from bench.overhead import pipeline_runs

    medians = {}
    for replay in (False, True):
        with tempfile.TemporaryDirectory(prefix="secd-bench-replay-") as tmp:
            pipeline, _, _ = asyncio.run(pipeline_runs(Path(tmp), runs, replay=replay))
        medians[replay] = statistics.median(pipeline)
        print(f"replay={replay}: median {medians[replay]:.3f} s push -> published")
    return medians[True] / medians[False]


def _reasons(report) -> str:
    found = {f.check for r in report.files for f in r.findings if f.verdict != "pass"}
    found |= {f.check for f in report.log_findings if f.verdict != "pass"}
    return ", ".join(sorted(found))


def sdc(index: SourceIndex, cases: list[SdcCase]) -> tuple[int, int, int, int]:
    """(disclosive, held, benign, passed) over the SDC corpus, each case printed."""
    disclosive = held = benign = passed = 0
    for case in cases:
        report = check_outputs(case.files, b"", index, case.rules, released=case.released)
        print(
            f"sdc {case.name:28} expect {case.expect:4} got {report.verdict:6} {_reasons(report)}"
        )
        if case.expect == "held":
            disclosive += 1
            held += report.verdict != "pass"
        else:
            benign += 1
            passed += report.verdict == "pass"
    return disclosive, held, benign, passed


def canaries(index: SourceIndex, runs: int) -> tuple[float, int]:
    """(share of runs that printed a canary and were blocked, runs wrongly blocked)."""
    key = canary_key(KEY)
    rules = Rules()
    blocked = false_blocks = 0
    for n in range(runs):
        run_id = f"rbench{n:04d}"
        plant = Canaries.for_run(key, run_id, 3)  # [canaries] rows as a site would set it
        row = plant.rows[n % len(plant.rows)]
        forms = [
            f"patient {row.personnummer} loaded",
            f"({row.patient_id}, '{row.name}', {row.birth_date!r})",
            f"DEBUG name={row.name.upper()}",
            f"id {row.personnummer[2:].replace('-', '')}: ok",
        ]
        ordinary = f"epoch {n} loss=0.{n:03d} val_auc=0.81\nfold {n % 5} done\n"
        log = (ordinary + forms[n % len(forms)] + "\n").encode()
        output = OutputFile("summary.txt", f"{forms[(n + 1) % len(forms)]}\n".encode(), "text")
        report = check_outputs([output], log, index, rules, canaries=plant)
        caught = report.log_verdict == "block" and report.files[0].verdict == "block"
        blocked += caught
        clean = check_outputs([], ordinary.encode(), index, rules, canaries=plant)
        false_blocks += clean.log_verdict == "block"
    return blocked / runs, false_blocks


def differencing_overhead(index: SourceIndex, cases: list[SdcCase], released: int, repeats: int):
    """Seconds to check the benign corpus against `released` earlier tables over none."""
    benign = [c for c in cases if c.expect == "pass"]
    history = []
    for i in range(released):
        case = benign[i % len(benign)]
        text = case.files[0].data.decode().replace("0\n", f"{5 + i % 3}0\n")
        data = text.encode()
        history.append(
            ReleasedTable(
                f"t{i}.csv", hashlib.sha256(data).hexdigest(), f"r{i}", case.files[0].kind, data
            )
        )

    def timed(tables: list[ReleasedTable]) -> float:
        started = time.perf_counter()
        for case in benign:
            check_outputs(case.files, b"", index, case.rules, released=tables)
        return time.perf_counter() - started

    alone = statistics.median(timed([]) for _ in range(repeats))
    against = statistics.median(timed(history) for _ in range(repeats))
    print(
        f"differencing: benign corpus {alone:.4f} s alone, {against:.4f} s against "
        f"{released} released tables"
    )
    return against / alone


def main() -> None:
    """Run every part and end with the figures line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canary-runs", type=int, default=40)
    parser.add_argument("--released", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--replay-runs", type=int, default=5, help="trivial runs each way (0: no stack, nan)"
    )
    args = parser.parse_args()
    index = SourceIndex.build(KEY, [patients_table()])
    cases = sdc_cases()
    disclosive, held, benign, passed = sdc(index, cases)
    canary_recall, canary_false_blocks = canaries(index, args.canary_runs)
    overhead = differencing_overhead(index, cases, args.released, args.repeats)
    models = model_figures()
    model_recall = models.held / models.disclosive if models else math.nan
    attack_s_p50 = models.attack_s_p50 if models else math.nan
    if models:
        benign, passed = benign + models.benign, passed + models.passed
    print(
        final_line(
            sdc_disclosive=disclosive,
            sdc_benign=benign,
            canary_recall=canary_recall,
            canary_false_blocks=canary_false_blocks,
            differencing_overhead_ratio=overhead,
        )
    )
    print(
        final_line(
            sdc_recall=held / disclosive,
            model_recall=model_recall,
            benign_pass_rate=passed / benign,
            attack_s_p50=attack_s_p50,
            replay_overhead_ratio=replay_figures(args.replay_runs),
        )
    )


if __name__ == "__main__":
    main()
