"""Limits and the cache rule through the whole pipeline (issue 14): real NATS, PostgreSQL, git,
gpg and bwrap; a misbehaving job fails with the limit named and leaves nothing on the host."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from secd_shared.runs import fold_run
from tests.helpers import is_root, requires

from .conftest import run_of

pytestmark = [
    pytest.mark.timeout(300),
    requires(is_root(), "the bubblewrap sandbox needs root to start"),
]


def _failed(run):
    return next(s.event.payload for s in run if s.event.type == "run.failed")


def _branch_files(stack, run) -> list[str]:
    view = fold_run(run[0].event.run_id, [s.event for s in run])
    git_dir = stack.state_dir / "forge" / f"{view.project}.git"
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", view.branch],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


def _show(stack, run, path: str) -> str:
    view = fold_run(run[0].event.run_id, [s.event for s in run])
    git_dir = stack.state_dir / "forge" / f"{view.project}.git"
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{view.branch}:{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


async def test_a_job_over_its_memory_limit_fails_naming_it(stack, repo):
    head = repo.commit(
        {
            "main.py": "chunks = [bytearray(16 << 20) for _ in range(64)]\nprint('all of it')\n",
            "secd.yml": "runfor: 0.05\nlimits:\n  memory: 64MiB\n",
        }
    )
    repo.push()
    run = await run_of(stack, head, "results.published")
    failed = _failed(run)
    assert failed.stage == "executor"
    assert "memory limit (64 MiB" in failed.reason, failed.reason


FORK_BOMB = """\
import os, time
for i in range(300):  # bounded, in case the limit were missing
    try:
        if os.fork() == 0:
            time.sleep(20)
            os._exit(0)
    except OSError as exc:
        print("fork refused:", exc.strerror, flush=True)
        raise SystemExit(1)
"""


async def test_a_fork_bomb_fails_at_the_process_limit(stack, repo):
    head = repo.commit({"main.py": FORK_BOMB, "secd.yml": "runfor: 0.05\nlimits: {pids: 40}\n"})
    repo.push()
    run = await run_of(stack, head, "results.published")
    assert "more than 40 processes" in _failed(run).reason


DISK_FILLER = """\
import os, time
block = os.urandom(1 << 20)
for i in range(4000):
    with open(f"{os.environ['OUTPUT_PATH']}/part-{i}", "wb") as f:
        f.write(block)
    time.sleep(0.002)
"""


async def test_the_disk_limit_stops_the_job_and_nothing_of_it_stays(stack, repo):
    head = repo.commit(
        {"main.py": DISK_FILLER, "secd.yml": "runfor: 0.05\nlimits: {disk: 16MiB}\n"}
    )
    repo.push()
    run = await run_of(stack, head, "results.published")
    failed = _failed(run)
    assert "disk limit (16 MiB" in failed.reason, failed.reason
    assert failed.outputs, "the (empty) outputs still travel as an artifact"
    # Nothing of the run stays with the executor; the branch has no output either.
    assert not (stack.state_dir / "executor" / "runs" / run[0].event.run_id).exists()
    assert not [f for f in _branch_files(stack, run) if f.startswith("output/")]


async def test_limits_above_the_site_maximum_fail_the_build_naming_the_field(stack, repo):
    head = repo.commit({"main.py": "print('hi')\n", "secd.yml": "limits:\n  memory: 1TiB\n"})
    repo.push()
    run = await run_of(stack, head, "results.published")
    failed = _failed(run)
    assert failed.stage == "builder"
    assert "limits.memory must be at most 16 GiB on this site" in failed.reason


UID_JOB = """\
import os
open(os.environ["OUTPUT_PATH"] + "/uid.txt", "w").write(str(os.getuid()))
"""


async def test_each_run_has_a_uid_of_its_own(stack, repo):
    uids = []
    for _ in range(2):
        secd_yml = "runfor: 0.05\noutputs: [{path: uid.txt, kind: text}]\n"
        head = repo.commit({"main.py": UID_JOB, "secd.yml": secd_yml})
        repo.push()
        run = await run_of(stack, head, "results.published")
        uids.append(int(_show(stack, run, "output/uid.txt")))
    assert uids[0] != uids[1]
    assert all(1_000_000 <= uid < 1_065_536 for uid in uids), uids


PLANT_LINK = """\
import os
os.symlink(os.environ["TARGET"], "/cache/b")
"""


async def test_a_link_planted_in_the_cache_is_never_mounted(stack, repo, tmp_path):
    host = tmp_path / "root-only"
    host.mkdir(mode=0o700)
    (host / "secret.txt").write_text("root only")
    head = repo.commit(
        {
            "main.py": PLANT_LINK.replace('os.environ["TARGET"]', repr(str(host))),
            "secd.yml": "runfor: 0.05\ncache_dir: a\n",
        }
    )
    repo.push()
    run = await run_of(stack, head, "results.published")
    assert fold_run(run[0].event.run_id, [s.event for s in run]).outcome == "succeeded"
    head = repo.commit(
        {
            "main.py": "import os; print(os.listdir('/cache'))\n",
            "secd.yml": "runfor: 0.05\ncache_dir: a/b\n",
        }
    )
    repo.push()
    run = await run_of(stack, head, "results.published")
    failed = _failed(run)
    assert failed.stage == "executor"
    assert "cache_dir 'a/b' cannot be used" in failed.reason and "link" in failed.reason
    info = host.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o700)
    assert os.listdir(host) == ["secret.txt"]
