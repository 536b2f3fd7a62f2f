"""The airlock's automatic checks over the corpus in tests/airlock/make_corpus.py, and their
speed.

Each case (an exfiltration attempt or a legitimate output of a study of the corpus's synthetic
patients table) goes through check_outputs with the site's default rules, against a SourceIndex
built from that table; each case's verdict is printed with the case's expectation. Recall is the
share of attempts held or withheld (review or block); the false-positive rate the share of
legitimate cases not passed.

Throughput: about --mb MB of mixed text (a training log, aggregate CSV, markdown prose, JSON
metrics, a few rare values and ids of the table sprinkled in as a real job's text would not
have them), checked as one `kind: text` output (check_file: identifier values, encodings,
source match), --repeats times; bytes / median seconds. One core, this interpreter.

Gate overhead: what the airlock adds to a run. A real stack (NATS, embedded PostgreSQL, every
service, as bench/overhead.py starts it, with its helpers) runs a trivial job that declares its
one output, a warm-up and then --runs times; each run's gate is the time from run.finished to
the first outputs.released (reading the outputs, fingerprinting the granted table, the checks),
which is what the publisher waits for besides the job's end; the figure is their median.
Last line:

    recall=<caught attempts / attempts> false_positive_rate=<held legitimate / legitimate>
    check_mb_per_s=<scan throughput> gate_overhead_s=<median seconds added per run>
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.overhead import pipeline_runs
from secd_airlock.checks import OutputFile, Rules, SourceIndex, check_file, check_outputs
from tests.airlock.make_corpus import DIAGNOSES, KEY, cases, patients_table


def final_line(**figures: float | int | str) -> str:
    """The name=value line the bench ends with; more figures (gate_overhead_s=) join it."""
    parts = []
    for name, value in figures.items():
        parts.append(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def mixed_text(megabytes: float, seed: int = 5) -> bytes:
    """Text as jobs print and write it: logs, aggregate tables, prose, JSON."""
    rng = random.Random(seed)
    words = (
        "the model cohort patients mean median interval confidence regression analysis "
        "sensitivity baseline follow-up outcome exposure adjusted hazard ratio of in and with "
        "for was were a an to by we results table figure"
    ).split()
    chunks = []
    size = 0
    step = 0
    while size < megabytes * 1_000_000:
        pick = rng.random()
        if pick < 0.5:
            step += 1
            chunk = (
                f"2024-03-01T10:{step % 60:02d}:{step % 59:02d} epoch {step // 100} step {step} "
                f"loss={rng.random():.4f} lr={1e-3 * rng.random():.2e} "
                f"val_auc={0.5 + rng.random() / 2:.3f}\n"
            )
        elif pick < 0.7:
            chunk = (
                f"{rng.choice(DIAGNOSES)},{rng.choice('FM')},{rng.randrange(10, 400, 5)},"
                f"{rng.uniform(20, 80):.1f},{rng.uniform(4, 10):.2f}\n"
            )
        elif pick < 0.95:
            chunk = " ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize()
            chunk += f" (n = {rng.randint(10, 500)}, p = {rng.random():.3f}).\n"
        else:
            chunk = (
                f'{{"fold": {rng.randint(1, 10)}, "auc": {rng.random():.4f}, '
                f'"brier": {rng.random() / 4:.4f}, "n": {rng.randint(100, 1000)}}}\n'
            )
        chunks.append(chunk)
        size += len(chunk)
    return "".join(chunks).encode()


def corpus(index: SourceIndex, rules: Rules) -> tuple[float, float]:
    """Each case's verdict; recall and false-positive rate."""
    caught = attempts = held = legitimate = 0
    for case in cases():
        report = check_outputs(case.files, case.log, index, rules)
        reasons = sorted(
            {f.check for r in report.files for f in r.findings if f.verdict != "pass"}
            | {f.check for f in report.log_findings}
        )
        print(
            f"{case.category:5} {case.name:24} expect {case.expect:6} got {report.verdict:6} "
            f"{', '.join(reasons)}"
        )
        if case.category == "exfil":
            attempts += 1
            caught += report.verdict != "pass"
        else:
            legitimate += 1
            held += report.verdict != "pass"
    return caught / attempts, held / legitimate


def throughput(index: SourceIndex, rules: Rules, megabytes: float, repeats: int) -> float:
    """MB/s of check_file over mixed text, median of repeats."""
    data = mixed_text(megabytes)
    file = OutputFile("notes.txt", data, "text")
    seconds = []
    for n in range(1, repeats + 1):
        started = time.perf_counter()
        report = check_file(file, index, rules)
        seconds.append(time.perf_counter() - started)
        print(
            f"throughput run {n}: {len(data) / 1e6:.2f} MB in {seconds[-1]:.3f} s "
            f"(verdict {report.verdict})"
        )
    return len(data) / 1e6 / statistics.median(seconds)


def gate_overhead(runs: int) -> float:
    """Median seconds from run.finished to outputs.released over `runs` trivial runs."""
    with tempfile.TemporaryDirectory(prefix="secd-bench-airlock-") as tmp:
        _, stages, _ = asyncio.run(pipeline_runs(Path(tmp), runs))
    gates = [s["gate"] for s in stages]
    for n, seconds in enumerate(gates, 1):
        print(f"gate run {n}: {seconds:.3f} s from run.finished to outputs.released")
    return statistics.median(gates)


def main() -> None:
    """Parse the options, run the corpus and the throughput runs, end with the figures line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=4.0, help="MB of mixed text (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="throughput runs (default 5)")
    parser.add_argument(
        "--runs",
        type=int,
        default=7,
        help="trivial runs on a real stack (default 7; 0 leaves the stack out)",
    )
    args = parser.parse_args()
    rules = Rules()
    started = time.perf_counter()
    index = SourceIndex.build(KEY, [patients_table()], rules)
    print(f"source index built in {time.perf_counter() - started:.3f} s")
    recall, false_positive_rate = corpus(index, rules)
    mb_per_s = throughput(index, rules, args.mb, args.repeats)
    figures: dict[str, float | int | str] = {
        "recall": recall,
        "false_positive_rate": false_positive_rate,
        "check_mb_per_s": mb_per_s,
    }
    # --runs 0 leaves out the stack (no NATS, no PostgreSQL): the checks' figures only.
    if args.runs > 0:
        figures["gate_overhead_s"] = gate_overhead(args.runs)
    print(final_line(**figures))


if __name__ == "__main__":
    main()
