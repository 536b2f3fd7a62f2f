"""The cache_dir race (issue 14): a job swapping its cache folder for a link never gets a host
folder mounted into a second run.

Run A has cache_dir `a` and keeps exchanging `/cache/b` (a real folder) with `/cache/b-link` (a
symlink to a root-only host folder) with renameat2(RENAME_EXCHANGE), as fast as it can. Run B,
started again and again meanwhile, has cache_dir `a/b`: secd must either mount the real folder
`a/b` or refuse to start, and never show, chown or write the host folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

from secd_executor.sandbox import SandboxError, run_sandboxed
from secd_shared.safepath import Beneath

from .conftest import Jobs, wait_for

TRIES = 25

SWAPPER = """
import ctypes, json, os, time
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
os.makedirs("/cache/b", exist_ok=True)
if not os.path.lexists("/cache/b-link"):
    os.symlink({target!r}, "/cache/b-link")
open("/output/ready", "w").close()
swaps = 0
while not os.path.exists("/cache/stop"):
    if libc.renameat2(AT_FDCWD, b"/cache/b", AT_FDCWD, b"/cache/b-link", RENAME_EXCHANGE) == 0:
        swaps += 1
json.dump({{"swaps": swaps}}, open("/output/swaps.json", "w"))
"""

PROBE = """
import json, os
json.dump({"listing": sorted(os.listdir("/cache"))}, open("/output/seen.json", "w"))
open("/cache/written-by-b", "w").write("b")
"""


async def test_a_swapping_job_never_gets_a_host_folder_mounted(jobs: Jobs, tmp_path: Path):
    host = tmp_path / "host-secret"
    host.mkdir(mode=0o700)
    (host / "secret.txt").write_text("root only")
    researcher = tmp_path / "cache-root" / "alice"
    researcher.mkdir(parents=True, mode=0o700)
    (researcher / "a").mkdir()

    swapper = jobs.spec(
        SWAPPER.format(target=str(host)),
        cache_dir=Beneath(researcher, ("a",)),
        uid=1_600_001,
        timeout_s=120,
        name="secd-race-a",
    )
    task = asyncio.create_task(run_sandboxed(swapper, jobs.log_path))
    outcomes = {"mounted the real folder": 0, "refused": 0}
    try:
        ready = jobs.root / "output" / "ready"
        await asyncio.to_thread(wait_for, lambda: ready.exists() or task.done())
        assert not task.done(), jobs.log_path.read_text()
        for attempt in range(TRIES):
            root = tmp_path / f"b-{attempt}"
            root.mkdir()
            (root / "src").mkdir()
            (root / "src" / "main.py").write_text(PROBE)
            (root / "output").mkdir()
            probe = jobs.spec(PROBE, cache_dir=Beneath(researcher, ("a", "b")), uid=1_600_002)
            probe = replace(
                probe,
                name=f"secd-race-b-{attempt}",
                source_dir=root / "src",
                output_dir=root / "output",
            )
            try:
                result = await run_sandboxed(probe, root / "job.log")
            except SandboxError as exc:
                assert "link" in str(exc) or "changed" in str(exc), exc
                outcomes["refused"] += 1
                continue
            if result.exit_code != 0:
                # The launcher refused (the folder changed between the executor and it).
                assert "secret" not in (root / "job.log").read_text()
                outcomes["refused"] += 1
                continue
            seen = json.loads((root / "output" / "seen.json").read_text())
            assert "secret.txt" not in seen["listing"], seen
            outcomes["mounted the real folder"] += 1
    finally:
        (researcher / "a" / "stop").touch()
        swapped = await task
    assert swapped.exit_code == 0, jobs.log_path.read_text()
    swaps = json.loads((jobs.root / "output" / "swaps.json").read_text())["swaps"]
    print(f"race: {swaps} swaps by run A; run B over {TRIES} tries: {outcomes}")
    assert swaps > 1000, "the swapper must really have raced"
    # The host folder is untouched: still root's, 0700, and holds only what it held.
    info = host.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o700)
    assert sorted(os.listdir(host)) == ["secret.txt"]
    assert (host / "secret.txt").stat().st_uid == 0
