"""The commit status a run amounts to at each event, and the status consumer against a real NATS
and the embedded forge's repository (statuses as git notes)."""

from __future__ import annotations

import subprocess

import pytest

from secd_publisher.forge import CommitStatus, EmbeddedResults
from secd_publisher.status import StatusReporter, status_for
from secd_shared.config import Config
from secd_shared.events import (
    Producer,
    PushReceived,
    PushVerified,
    ResultsPublished,
    RunFailed,
    RunFinished,
    RunRejected,
    RunStarted,
    new_event,
    new_run_id,
)

HEAD = "c" * 40


def events(*payloads, run_id: str = "r0000000000000000001"):
    """A run's events, in order."""
    return [
        new_event(p, run_id=run_id, producer=Producer("test", "0"), actor="alice", project="a/m")
        for p in payloads
    ]


PUSH = PushReceived(
    forge="git", repository="alice/model", ref="refs/heads/main", before="0" * 40, after=HEAD,
    pusher="acct-alice",
)  # fmt: skip
VERIFIED = PushVerified(
    repository="alice/model", ref="refs/heads/main", head=HEAD, commits=["a" * 40, HEAD],
    researcher="alice", keys=[],
)  # fmt: skip


@pytest.mark.parametrize(
    ("payloads", "expected"),
    [
        ([], None),
        ([PUSH], CommitStatus("pending", "verifying the signatures of the pushed commits")),
        ([PUSH, VERIFIED], CommitStatus("running", "2 commit(s) verified; building the environment")),  # noqa: E501
        ([PUSH, VERIFIED, RunStarted(sandbox="s")], CommitStatus("running", "running in the sandbox")),  # noqa: E501
        (
            [PUSH, RunRejected(repository="alice/model", ref="refs/heads/main", head=HEAD,
                               reason="commit 3f2a1c9 is not signed; sign it", commit="3f2a1c9")],
            CommitStatus("failed", "rejected: 3f2a1c9 is not signed; sign it"),
        ),
        (
            [PUSH, VERIFIED, RunFailed(stage="builder", reason="secd.yml: runfor is not a number")],
            CommitStatus("failed", "failed (builder): secd.yml: runfor is not a number"),
        ),
        (
            [PUSH, VERIFIED, RunFinished(exit_code=0, duration_s=1)],
            CommitStatus("success", "finished; results on branch secd/r0000000000000000001"),
        ),
        (
            [PUSH, VERIFIED, RunFinished(exit_code=3, duration_s=1)],
            CommitStatus("failed", "the job exited with code 3; results on branch secd/r0000000000000000001"),  # noqa: E501
        ),
    ],
)  # fmt: skip
def test_each_stage_has_its_status_and_one_line(payloads, expected):
    assert status_for(events(*payloads), "secd/") == expected


@pytest.fixture
def pushed(tmp_path):
    """An embedded forge with alice/model holding one commit (HEAD replaced by its id)."""
    config = Config(state_dir=str(tmp_path))
    bare = tmp_path / "forge" / "alice" / "model.git"
    env = {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "PATH": "/usr/bin:/bin",
        **{
            f"GIT_{who}_{what}": "a@x"
            for who in ("AUTHOR", "COMMITTER")
            for what in ("NAME", "EMAIL")
        },
    }
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, env=env)
    tree = subprocess.run(
        ["git", "--git-dir", str(bare), "mktree"], input="", capture_output=True, text=True,
        env=env, check=True,
    ).stdout.strip()  # fmt: skip
    commit = subprocess.run(
        ["git", "--git-dir", str(bare), "commit-tree", tree, "-m", "x"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()  # fmt: skip
    return config, commit


async def test_the_consumer_follows_the_run_and_never_goes_back(nats_server, admin_bus, pushed):
    config, commit = pushed
    push = PushReceived(
        forge="git", repository="alice/model", ref="refs/heads/main", before="0" * 40,
        after=commit, pusher="acct-alice",
    )  # fmt: skip
    rejected = RunRejected(
        repository="alice/model", ref="refs/heads/main", head=commit, reason="commit x is bad"
    )
    published = ResultsPublished(
        repository="alice/model", branch="secd/x", commit=commit, outcome="rejected", files=[]
    )
    run_id = new_run_id()
    run = events(push, VERIFIED, rejected, published, run_id=run_id)
    forge = EmbeddedResults(config)
    bus = await nats_server.bus("publisher")
    try:
        reporter = StatusReporter(bus, forge, "secd/", accounts={"acct-alice": "alice"})
        await admin_bus.publish(run[0])
        (received,) = await admin_bus.read_run(run_id)
        await reporter.on_event(received)
        assert forge.status_of(push) == CommitStatus(
            "pending", "verifying the signatures of the pushed commits"
        )
        for event in run[1:]:
            await admin_bus.publish(event)
        stored = await admin_bus.read_run(run_id)
        await reporter.on_event(stored[2])
        assert forge.status_of(push) == CommitStatus("failed", "rejected: x is bad")
        # Late redeliveries of earlier events do not take the run back.
        for late in (stored[1], stored[0], stored[3]):
            await reporter.on_event(late)
        assert forge.status_of(push) == CommitStatus("failed", "rejected: x is bad")
    finally:
        await bus.close()


async def test_no_status_is_written_for_a_pusher_secd_does_not_know(nats_server, admin_bus, pushed):
    config, commit = pushed
    bare = config.path(config.forge.root) / "alice" / "model.git"
    push = PushReceived(
        forge="git", repository="alice/model", ref="refs/heads/main", before="0" * 40,
        after=commit, pusher="acct-mallory",
    )  # fmt: skip
    rejected = RunRejected(
        repository="alice/model", ref="refs/heads/main", head=commit, unknown_pusher=True,
        reason="the account 'acct-mallory' that pushed is not mapped to a researcher",
    )  # fmt: skip
    run_id = new_run_id()
    forge = EmbeddedResults(config)
    bus = await nats_server.bus("publisher")
    try:
        reporter = StatusReporter(bus, forge, "secd/", accounts={"acct-alice": "alice"})
        await admin_bus.publish(events(push, run_id=run_id)[0])
        # Before the verifier has decided: the push alone says the pusher is unknown.
        (received,) = await admin_bus.read_run(run_id)
        await reporter.on_event(received)
        assert forge.status_of(push) is None
        await admin_bus.publish(events(rejected, run_id=run_id)[0])
        for stored in await admin_bus.read_run(run_id):
            await reporter.on_event(stored)
    finally:
        await bus.close()
    assert forge.status_of(push) is None
    refs = subprocess.run(
        ["git", "--git-dir", str(bare), "for-each-ref", "--format=%(refname)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert refs == []  # no notes ref, no branch: the fixture's commit is on no ref at all
