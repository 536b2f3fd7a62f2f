"""secd on a JetStream cluster of three NATS nodes (`secd up --cluster 3`), for real: every stream
on all three, and runs pushed while the node that leads the log is SIGKILLed and restarted are
each published exactly once, with no event lost."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter

import nats
import pytest

from secd.audit import verify_command
from secd_shared.identities import BOOTSTRAP_USER
from secd_shared.pushes import PUSH_STREAM
from secd_shared.runs import fold_run
from tests.helpers import is_root, requires

from .conftest import run_of, start_stack

pytestmark = [
    pytest.mark.timeout(300),
    requires(is_root(), "the bubblewrap sandbox needs root to start"),
]

STREAMS = ("SECD", "SECD_LOGS", "SECD_LOGVIEW", "SECD_CHECKPOINTS", PUSH_STREAM)
# Every event of a run that succeeded, each once.
SUCCEEDED = (
    "push.received", "push.verified", "build.succeeded", "credentials.issued", "run.started",
    "run.finished", "credentials.revoked", "outputs.checked", "outputs.released",
    "results.published",
)  # fmt: skip

TRIVIAL_JOB = """\
import os
from pathlib import Path

Path(os.environ["OUTPUT_PATH"], "n.txt").write_text(Path("n.txt").read_text())
print("trivial job done", flush=True)
"""


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, keys):
    """The e2e stack (see conftest), with NATS as a cluster of three nodes."""
    stack = await start_stack(tmp_path_factory.mktemp("cluster"), keys, cluster=3)
    yield stack
    await stack.stop()


@pytest.fixture
async def admin(stack):
    """A JetStream context as the bootstrap user, connected to every node."""
    nc = await nats.connect(
        stack.nats_url.split(","),
        user=BOOTSTRAP_USER,
        password=stack.secret["nats"][BOOTSTRAP_USER],
        reconnect_time_wait=0.2,
        max_reconnect_attempts=-1,
    )
    yield nc.jetstream()
    await nc.close()


async def _all_current(js, stream: str, timeout: float = 60) -> object:
    """The stream's info once it has a leader and both other replicas are current, lag 0."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = await js.stream_info(stream)
            replicas = info.cluster.replicas or []
            if (
                info.cluster.leader
                and len(replicas) == 2
                and all(r.current and not r.lag for r in replicas)
            ):
                return info
        except (nats.errors.TimeoutError, nats.js.errors.APIError):
            pass  # no leader yet
        assert time.monotonic() < deadline, f"{stream}: replicas not current after {timeout} s"
        await asyncio.sleep(0.2)


async def test_every_stream_and_consumer_has_three_replicas(stack, admin):
    assert len(stack.nats_url.split(",")) == 3
    for stream in STREAMS:
        info = await _all_current(admin, stream)
        assert info.config.num_replicas == 3, stream
        names = {info.cluster.leader, *(r.name for r in info.cluster.replicas)}
        assert names == {"secd-1", "secd-2", "secd-3"}, stream
    consumer = await admin.consumer_info("SECD", "executor")
    assert consumer.cluster.leader and len(consumer.cluster.replicas) == 2


async def test_runs_pushed_while_the_log_leader_is_killed_are_each_published_once(
    stack, admin, repo, capsys
):
    info = await _all_current(admin, "SECD")
    before = info.state.messages
    leader = int(info.cluster.leader.removeprefix("secd-")) - 1
    heads = []

    def push(n: int) -> None:
        secd_yml = "runfor: 0.05\noutputs: [{path: n.txt, kind: text}]\n"
        files = {"main.py": TRIVIAL_JOB, "n.txt": f"{n}\n", "secd.yml": secd_yml}
        heads.append(repo.commit(files))
        repo.push()

    push(1)
    push(2)
    stack.kill_nats_node(leader)  # SIGKILL: its runs' events are in flight
    killed_at = time.monotonic()
    push(3)  # the stream has no leader for a few seconds: the gateway waits for one
    push(4)
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - killed_at)))
    await asyncio.to_thread(stack.start_nats_node, leader)
    push(5)
    push(6)

    runs = [await run_of(stack, head, "credentials.revoked", timeout=180) for head in heads]
    runs = [await run_of(stack, head, "results.published", timeout=180) for head in heads]
    git_dir = stack.state_dir / "forge" / f"{runs[0][0].event.project}.git"
    for head, run in zip(heads, runs, strict=True):
        events = [stored.event for stored in run]
        view = fold_run(events[0].run_id, events)
        assert view.outcome == "succeeded", (head, view.reason, view.log_tail)
        failures = [e.payload.reason for e in events if e.type == "credentials.revoke_failed"]
        assert Counter(e.type for e in events) == Counter(SUCCEEDED), (head, failures)
        show = subprocess.run(
            ["git", "--git-dir", str(git_dir), "show", f"{view.branch}:output/n.txt"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert show.stdout == f"{heads.index(head) + 1}\n"
    branches = subprocess.run(
        ["git", "--git-dir", str(git_dir), "branch", "--list", "secd/*"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert sorted(branches) == sorted(f"secd/{run[0].event.run_id}" for run in runs)

    # No event lost: the restarted node caught up, and the log is whole (the hash chain of
    # every run, no gap in the sequence, the signed checkpoints) as an officer verifies it.
    info = await _all_current(admin, "SECD")
    assert info.state.messages == before + len(SUCCEEDED) * len(heads)
    assert info.state.first_seq == 1 and info.state.last_seq == info.state.messages
    capsys.readouterr()
    assert await verify_command(stack.state_dir, as_json=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clean"] and report["events"] == info.state.messages, report
