"""Limits per run, enforced on real bwrap sandboxes: memory, processes, disk, /tmp, CPU, uids."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import msgspec
import pytest

from secd_executor.cgroups import Cgroups, detect_cgroups
from secd_executor.sandbox import DEFAULT_LIMITS, run_sandboxed
from secd_executor.uids import UidPool, UidsExhausted
from secd_shared.limits import parse_size
from tests.helpers import need

from .conftest import Jobs, wait_for

MiB = 1024 * 1024
# Each test its own uid: RLIMIT_NPROC counts per uid, and so would leftovers.
UID = 1_500_000


def _uid_processes(uid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def _no_processes_left(uid: int) -> None:
    """Every process of the run's uid gone (a killed sandbox's init may linger as a zombie
    for a moment, until the host's init reaps it)."""
    await asyncio.to_thread(wait_for, lambda: _uid_processes(uid) == [], 10)


def _limited(**values: object):
    return msgspec.structs.replace(DEFAULT_LIMITS, **values)


async def test_a_job_asking_for_more_memory_than_its_limit_is_stopped(jobs: Jobs) -> None:
    uid = UID + 1
    run = await jobs.run(
        """
        chunks = []
        for i in range(64):
            chunks.append(bytearray(16 * 1024 * 1024))  # touched: bytearray zero-fills
            print("allocated", (i + 1) * 16, "MiB", flush=True)
        print("all allocated")
        """,
        uid=uid,
        limits=_limited(memory=96 * MiB),
    )
    assert run.result.exit_code != 0
    assert "all allocated" not in run.log
    if detect_cgroups("auto", "secd").version == "none":
        # Without cgroups the limit is RLIMIT_AS: the allocation fails in the job itself.
        assert "MemoryError" in run.log
    else:
        assert run.result.limit == "memory"
        assert "memory limit (96 MiB" in run.result.limit_reason
    await _no_processes_left(uid)


async def test_a_fork_bomb_stops_at_the_process_limit(jobs: Jobs) -> None:
    uid = UID + 2
    run = await jobs.run(
        """
        import json, os, time
        children, refused = [], None
        for i in range(400):  # bounded: the test must end even if the limit were missing
            try:
                pid = os.fork()
            except OSError as exc:
                refused = exc.strerror
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        json.dump({"forked": len(children), "refused": refused}, open("/output/bomb.json", "w"))
        """,
        uid=uid,
        limits=_limited(pids=32),
    )
    bomb = json.loads((run.output / "bomb.json").read_text())
    # The launcher chain (bwrap, its init, the job) counts too.
    assert bomb["forked"] < 32 and bomb["refused"] is not None, bomb
    if detect_cgroups("auto", "secd").version != "none":
        assert run.result.limit == "pids"
        assert "more than 32 processes" in run.result.limit_reason
    # The sleeping children went with the sandbox; nothing of the run is left on the host.
    await _no_processes_left(uid)


async def test_the_disk_limit_stops_a_job_that_fills_its_output(jobs: Jobs) -> None:
    uid = UID + 3
    run = await jobs.run(
        """
        import os, time
        block = os.urandom(1024 * 1024)
        for i in range(2000):  # 2 GiB if nothing stopped it
            with open(f"/output/part-{i}", "wb") as f:
                f.write(block)
            time.sleep(0.005)
        print("wrote everything")
        """,
        uid=uid,
        limits=_limited(disk=16 * MiB),
        timeout_s=120,
    )
    assert run.result.limit == "disk", run.log
    assert "disk limit (16 MiB" in run.result.limit_reason
    assert "wrote everything" not in run.log
    written = sum(p.stat().st_size for p in run.output.iterdir())
    # Stopped within one look of the watch (0.1 s to 2 s of writing), far below 2 GiB.
    assert 16 * MiB < written < 400 * MiB
    await _no_processes_left(uid)


async def test_one_file_cannot_grow_past_the_disk_limit(jobs: Jobs) -> None:
    run = await jobs.run(
        """
        import os
        with open("/output/big", "wb") as f:
            for _ in range(64):
                f.write(os.urandom(1024 * 1024))
        """,
        uid=UID + 4,
        limits=_limited(disk=8 * MiB),
    )
    assert run.result.exit_code != 0
    assert "File too large" in run.log
    assert (run.output / "big").stat().st_size <= 8 * MiB
    assert run.result.limit == "disk"


async def test_tmp_has_its_size(jobs: Jobs) -> None:
    run = await jobs.run(
        """
        import json, os
        st = os.statvfs("/tmp")
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(64):
                    f.write(b"x" * 1024 * 1024)
            outcome = "filled"
        except OSError as exc:
            outcome = exc.strerror
        json.dump({"size": st.f_blocks * st.f_frsize, "outcome": outcome},
                  open("/output/tmp.json", "w"))
        """,
        uid=UID + 5,
        limits=_limited(tmp=8 * MiB),
    )
    tmp = json.loads((run.output / "tmp.json").read_text())
    assert tmp["size"] == 8 * MiB
    assert tmp["outcome"] == "No space left on device"


async def test_the_run_s_cgroup_holds_its_cpu_and_memory_limits(jobs: Jobs) -> None:
    cgroups = detect_cgroups("auto", "secd")
    need(cgroups.version != "none", "no cgroups here: CPUs are limited by affinity instead")
    spec = jobs.spec(
        "import os, time\nopen('/output/ready', 'w').close()\ntime.sleep(30)\n",
        uid=UID + 6,
        limits=_limited(cpus=0.5, memory=200 * MiB, pids=77),
        cgroups=cgroups,
    )
    task = asyncio.create_task(run_sandboxed(spec, jobs.log_path))
    try:
        await asyncio.to_thread(wait_for, lambda: (jobs.root / "output/ready").exists())
        if cgroups.version == "v1":
            base = Path("/sys/fs/cgroup")
            folder = f"{cgroups.root}/{spec.name}"
            quota = int((base / "cpu" / folder / "cpu.cfs_quota_us").read_text())
            period = int((base / "cpu" / folder / "cpu.cfs_period_us").read_text())
            memory = int((base / "memory" / folder / "memory.limit_in_bytes").read_text())
            pids = (base / "pids" / folder / "pids.max").read_text().strip()
            procs = (base / "memory" / folder / "cgroup.procs").read_text().split()
        else:
            folder = cgroups.root / spec.name
            quota, period = map(int, (folder / "cpu.max").read_text().split())
            memory = int((folder / "memory.max").read_text())
            pids = (folder / "pids.max").read_text().strip()
            procs = (folder / "cgroup.procs").read_text().split()
        assert quota / period == 0.5
        assert memory == 200 * MiB
        assert pids == "77"
        assert len(procs) >= 3  # bwrap, its init, the job
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    gone = (
        Path("/sys/fs/cgroup/memory") / str(cgroups.root) / spec.name
        if cgroups.version == "v1"
        else cgroups.root / spec.name
    )
    assert not gone.exists()


async def test_the_job_sees_the_interpreter_but_not_the_host_s_packages(
    jobs: Jobs, run_env: Path
) -> None:
    run = await jobs.run(
        """
        import json, os, sys, sysconfig
        base = sys.base_prefix
        site = sysconfig.get_paths(vars={"base": base, "platbase": base})["purelib"]
        json.dump({
            "base": base,
            "top": sorted(os.listdir(base)),
            "site": os.listdir(site) if os.path.isdir(site) else None,
            "json_ok": json.dumps([1]) == "[1]",
        }, open("/output/py.json", "w"))
        """
    )
    assert run.result.exit_code == 0, run.log
    seen = json.loads((run.output / "py.json").read_text())
    need(
        not seen["base"].startswith("/usr"),
        "the test venv was made from the system Python, which /usr brings along",
    )
    assert seen["top"] == ["bin", "lib"]
    assert seen["site"] == []  # the host has hundreds of packages there
    assert seen["json_ok"] is True
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert len(os.listdir(Path(seen["base"], "lib", version, "site-packages"))) > 0


def test_uids_are_leased_one_run_each(tmp_path: Path) -> None:
    pool = UidPool(2_000_000, 3, tmp_path / "uids")
    first = pool.lease("r1")
    second = pool.lease("r1")  # the same run id asks again: another uid, never the same
    third = pool.lease("r2")
    assert len({first.uid, second.uid, third.uid}) == 3
    assert all(2_000_000 <= lease.uid < 2_000_003 for lease in (first, second, third))
    with pytest.raises(UidsExhausted, match="all 3 sandbox uids are in use"):
        pool.lease("r3")
    second.release()
    assert pool.lease("r3").uid == second.uid
    second.release()  # twice is fine


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GiB", 4 * 1024**3), ("512MiB", 512 * MiB), ("1.5G", 1_500_000_000), ("100", 100)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text, "limits.memory") == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "4 parsecs", "1e99"])
def test_bad_sizes_name_the_field(text: str) -> None:
    with pytest.raises(ValueError, match=r"limits\.memory"):
        parse_size(text, "limits.memory")


def test_cgroup_v2_files_are_written_and_read_as_the_kernel_names_them(tmp_path: Path) -> None:
    # No machine here has cgroup v2 with memory and pids (they are on v1): the folder is a plain
    # one, so this checks what is written and how events are read, not the kernel's side.
    cgroups = Cgroups("v2", tmp_path)
    run = cgroups.create("secd-r1", _limited(memory=64 * MiB, cpus=1.5, pids=99))
    folder = tmp_path / "secd-r1"
    assert (folder / "memory.max").read_text() == str(64 * MiB)
    assert (folder / "pids.max").read_text() == "99"
    assert (folder / "cpu.max").read_text() == "150000 100000"
    assert run.procs_files == [str(folder / "cgroup.procs")]
    assert run.limit_hit() is None
    (folder / "pids.events").write_text("max 3\n")
    assert run.limit_hit() == "pids"
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    assert run.limit_hit() == "memory"
