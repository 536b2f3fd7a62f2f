"""What the per-run limits cost: the same trivial job in the real bubblewrap sandbox, with the
run's cgroup (memory, pids, CPU: `executor.cgroups = "auto"`) and without it (`"none"`: rlimits
only), alternating in one process; and the cgroup's own set-up and removal timed alone.

Both arms keep what every run has whatever the site sets (a uid of its own, rlimits, the disk
watch, the sized /tmp); the cgroup is the part that costs. Needs root (the sandbox launcher).
The last line holds the figures:

    limits_s=<median with the cgroup - median without> with_s=... without_s=...
    cgroup_setup_ms=<median create + remove> cgroups=<v1|v2|none here> runs=N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from secd_executor.cgroups import detect_cgroups
from secd_executor.sandbox import DEFAULT_LIMITS, SandboxSpec, run_sandboxed


def _spec(root: Path, env_dir: Path, n: int) -> SandboxSpec:
    """A fresh spec for run n: its own source, output and cache folders and its own uid."""
    run = root / f"run-{n}"
    src = run / "src"
    for folder in (src, run / "output", run / "cache"):
        folder.mkdir(parents=True)
    (src / "main.py").write_text("print('ok')\n")
    return SandboxSpec(
        name=f"secd-bench-{n}",
        command=["python", "main.py"],
        source_dir=src,
        env_dir=env_dir,
        output_dir=run / "output",
        cache_dir=run / "cache",
        timeout_s=60,
        uid=1_600_000 + n,
    )


async def _timed(spec: SandboxSpec, log: Path) -> float:
    started = time.perf_counter()
    result = await run_sandboxed(spec, log)
    seconds = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"the bench job failed ({result.exit_code}): {log.read_text()[-500:]}")
    return seconds


async def bench(runs: int) -> str:
    if os.geteuid() != 0:
        raise SystemExit("bench/limits.py runs real sandboxes: run it as root")
    with tempfile.TemporaryDirectory(prefix="secd-bench-limits-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # noqa: S103  (each run's uid walks to its folders)
        env_dir = root / "env"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
        cgroups, none = detect_cgroups("auto", "secd-bench"), detect_cgroups("none", "secd-bench")
        with_s, without_s = [], []
        for n in range(runs):
            # Alternate, so both arms see the same drift of a noisy machine.
            for arm, times in ((cgroups, with_s), (none, without_s)):
                spec = replace(_spec(root, env_dir, len(with_s) * 2 + len(without_s)), cgroups=arm)
                times.append(await _timed(spec, root / f"log-{spec.name}"))
            print(f"run {n + 1}: with cgroup {with_s[-1]:.3f} s, without {without_s[-1]:.3f} s")
        setup_ms = []
        for n in range(max(runs, 20)):
            started = time.perf_counter()
            cgroup = cgroups.create(f"secd-bench-setup-{n}", DEFAULT_LIMITS)
            if cgroup is not None:
                cgroup.remove()
            setup_ms.append((time.perf_counter() - started) * 1000)
        kind = cgroups.version
    with_m, without_m = statistics.median(with_s), statistics.median(without_s)
    print(f"median with the cgroup {with_m:.3f} s, without {without_m:.3f} s ({kind})")
    return (
        f"limits_s={with_m - without_m:.3f} with_s={with_m:.3f} without_s={without_m:.3f} "
        f"cgroup_setup_ms={statistics.median(setup_ms):.2f} cgroups={kind} runs={runs}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per arm (default 15)")
    print(asyncio.run(bench(parser.parse_args().runs)))


if __name__ == "__main__":
    main()
