"""What secd adds to a trivial job: the whole pipeline against the same command run directly.

A Stack (NATS, embedded PostgreSQL, the six services) starts in a temporary state dir, set up as
`secd demo` does: a GPG key for the researcher, her keyring file, groups.toml granting
postgres-patients-read on a small seeded table, and a forge repository with its post-receive hook.
The job has no requirements, `runfor: 0.05`, and a main.py that writes one small file to
$OUTPUT_PATH and prints a line; it queries nothing, but the pipeline still issues and revokes its
database account as for any run.

Pipeline time of one run: from just before `git push` of a new signed commit to main (each one
changes run.txt and is signed before the clock starts; the hook posts to the gateway inside the
push) until results.published for that commit is in the event log, read as the `auditor` identity
every POLL_S seconds, so each figure may be up to POLL_S (plus one read of the log) late. One
warm-up run (it builds the environment) is not counted.
Direct time of one run: `python main.py` (this interpreter) in the project's checkout, with
OUTPUT_PATH set to a temporary directory, by subprocess. Both are medians of --runs runs; stages
are medians of the durations fold_run derives from each run's event times. Then the same on a
second stack whose NATS is a JetStream cluster of three nodes on this machine (`secd up
--cluster 3`: every stream has three replicas, so every write waits for a second node). Last
line:

    overhead_s=<median pipeline - median direct> ratio=<median pipeline / median direct> ...
    cluster_overhead_s=<median pipeline on the cluster - median direct> cluster_vs_single=...
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from secd.audit import wait_for_commit
from secd.demo import RESEARCHER, _git, _make_key, _seed_patients
from secd.stack import Stack
from secd_shared.bus import EventBus, connect
from secd_shared.config import NatsConfig
from secd_shared.forge import create_repository
from secd_shared.runs import fold_run

POLL_S = 0.01
TIMEOUT_S = 60.0

MAIN_PY = """\
import os
from pathlib import Path

Path(os.environ["OUTPUT_PATH"], "result.txt").write_text("ok\\n")
print("trivial job done")
"""
SECD_YML = (
    'runfor: 0.05\ngpu: false\ncommand: ["python", "main.py"]\n'
    "outputs: [{path: result.txt, kind: text}]\n"
)


def _project(stack: Stack, root: Path, *, replay: bool = False) -> tuple[Path, dict]:
    """A signing key, its keyring file, the groups, and a checkout wired to a forge repository
    (its secd.yml asking for neighbour replay when `replay`)."""
    gnupg = root / "gnupg"
    fingerprint = _make_key(gnupg)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    armored = subprocess.run(
        ["gpg", "--batch", "--armor", "--export", fingerprint],
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    (stack.state_dir / "keys" / RESEARCHER).mkdir(parents=True, exist_ok=True)
    (stack.state_dir / "keys" / RESEARCHER / f"{RESEARCHER}.asc").write_bytes(armored)
    (stack.state_dir / "groups.toml").write_text(
        f'[researchers]\n{RESEARCHER} = ["postgres-patients-read"]\n'
    )
    bare = create_repository(
        stack.state_dir / "forge",
        f"{RESEARCHER}/trivial",
        gateway_url=stack.gateway_url,
        token_file=Path(stack.config["gateway"]["token_file"]),
    )
    work = root / "trivial"
    work.mkdir()
    _git(work, "init", "--quiet", "--initial-branch=main")
    _git(work, "config", "user.name", "Bench Researcher")
    _git(work, "config", "user.email", f"{RESEARCHER}@example.org")
    _git(work, "config", "user.signingkey", fingerprint)
    _git(work, "remote", "add", "origin", str(bare))
    (work / "main.py").write_text(MAIN_PY)
    (work / "secd.yml").write_text(SECD_YML + ("replay: true\n" if replay else ""))
    return work, env


async def _pipeline_run(bus: EventBus, work: Path, env: dict, n: int):
    """Commit (signed) and push; return (seconds until seen published, stage seconds).

    Besides fold_run's stages: `push` runs from just before `git push` to push.received's time,
    `seen` from results.published's time to when the poll saw it (both on this machine's clock).
    """
    (work / "run.txt").write_text(f"{n}\n")
    _git(work, "add", ".")
    _git(work, "commit", "--quiet", "-S", "-m", f"bench run {n}", env=env)
    head = _git(work, "rev-parse", "HEAD")
    wall, started = time.time(), time.perf_counter()
    _git(work, "push", "--quiet", "origin", "main", env=env)
    run = await wait_for_commit(bus, head, "results.published", timeout=TIMEOUT_S, interval=POLL_S)
    events = [stored.event for stored in run]
    elapsed, seen = time.perf_counter() - started, time.time()
    view = fold_run(events[0].run_id, events)
    if view.outcome != "succeeded":
        raise RuntimeError(f"run {view.run_id} {view.outcome}: {view.reason}\n{view.log_tail}")
    at = {kind: when.timestamp() for kind, when in reversed(view.events)}
    stages = {"push": at["push.received"] - wall, **view.stages}
    stages["seen"] = seen - at["results.published"]
    # The airlock's part: from the job's end to the release of its (declared) output.
    stages["gate"] = at["outputs.released"] - at["run.finished"]
    return elapsed, stages


def _direct_run(work: Path, out_root: Path, n: int) -> float:
    """`python main.py` in the checkout, with its own OUTPUT_PATH; return its seconds."""
    out = out_root / f"direct-{n}"
    out.mkdir()
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "main.py"],
        cwd=work,
        env={**os.environ, "OUTPUT_PATH": str(out)},
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


async def pipeline_runs(root: Path, runs: int, *, cluster: int | None = None, replay: bool = False):
    """Start a stack in `root`, push a warm-up run and `runs` measured ones; return the
    pipeline seconds, the stages of each (with `gate`: run.finished to outputs.released), and
    the checkout (for the direct runs). bench/airlock.py reuses it for its gate figure,
    bench/disclosure.py (with `replay`: the project asks for neighbour replay) for its ratio."""
    stack = Stack(root / "state", accounts={getpass.getuser(): RESEARCHER}, cluster=cluster)
    stack.prepare()
    started = time.perf_counter()
    try:
        await stack.start()
        nodes = f", NATS cluster of {cluster}" if cluster else ""
        print(f"stack started in {time.perf_counter() - started:.2f} s{nodes}")
        await _seed_patients(stack)
        work, env = _project(stack, root, replay=replay)
        creds = stack.credentials_for("auditor")
        bus = EventBus(
            await connect(
                NatsConfig(
                    url=stack.nats_url,
                    user=creds["SECD_NATS__USER"],
                    password=creds["SECD_NATS__PASSWORD"],
                ),
                "auditor",
            )
        )
        try:
            warm, _ = await _pipeline_run(bus, work, env, 0)
            print(f"warm-up (builds the environment): {warm:.3f} s")
            pipeline, stages = [], []
            for n in range(1, runs + 1):
                elapsed, stage = await _pipeline_run(bus, work, env, n)
                pipeline.append(elapsed)
                stages.append(stage)
                detail = " ".join(f"{k}={v:.3f}" for k, v in stage.items())
                print(f"pipeline run {n}: {elapsed:.3f} s  ({detail})")
        finally:
            await bus.close()
    finally:
        await stack.stop()
    return pipeline, stages, work


async def bench(runs: int) -> str:
    """Run the benchmark, print what it measures, and return the final name=value line."""
    with tempfile.TemporaryDirectory(prefix="secd-bench-") as tmp:
        root = Path(tmp)
        pipeline, stages, work = await pipeline_runs(root / "single", runs)
        direct = [_direct_run(work, root, n) for n in range(1, runs + 1)]
        for n, seconds in enumerate(direct, 1):
            print(f"direct run {n}: {seconds:.3f} s")
        cluster, cluster_stages, _ = await pipeline_runs(root / "cluster", runs, cluster=3)

    pipeline_s, direct_s = statistics.median(pipeline), statistics.median(direct)
    print(
        f"median pipeline {pipeline_s:.3f} s, direct {direct_s:.3f} s (log polled every {POLL_S}s)"
    )
    medians = {k: statistics.median(s.get(k, 0.0) for s in stages) for k in stages[0]}
    print("median stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in medians.items()))
    print("  (push: git push to push.received; total: first to last event; seen: log to poll)")
    cluster_s = statistics.median(cluster)
    medians = {k: statistics.median(s.get(k, 0.0) for s in cluster_stages) for k in stages[0]}
    print(f"median pipeline on the 3-node NATS cluster {cluster_s:.3f} s")
    print("median stages there: " + ", ".join(f"{k} {v:.3f}s" for k, v in medians.items()))
    overhead_s, cluster_overhead_s = pipeline_s - direct_s, cluster_s - direct_s
    gate_s = statistics.median(s["gate"] for s in stages)
    return (
        f"overhead_s={overhead_s:.3f} ratio={pipeline_s / direct_s:.2f} "
        f"pipeline_s={pipeline_s:.3f} direct_s={direct_s:.3f} runs={runs} "
        f"cluster_overhead_s={cluster_overhead_s:.3f} "
        f"cluster_vs_single={cluster_overhead_s / overhead_s:.2f} gate_overhead_s={gate_s:.3f}"
    )


def main() -> None:
    """Parse --runs, run the benchmark, end with the name=value line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="measured runs of each (default 7)")
    args = parser.parse_args()
    print(asyncio.run(bench(args.runs)))


if __name__ == "__main__":
    main()
