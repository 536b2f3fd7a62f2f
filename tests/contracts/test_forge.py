"""The forge port's contract, run against both adapters: the embedded forge, and GitLab through
FakeGitLab (a local server answering like GitLab API v4, repositories over real git smart HTTP).

The same tests, the same assertions: the GitLab adapter cannot drift from the embedded one.
"""

from __future__ import annotations

import os
import subprocess

import msgspec

from secd_shared.events import PushVerified, RunRejected, new_event
from secd_shared.service import producer_for
from secd_verifier.service import Verifier
from tests.forgeworld import ZERO, ForgeWorld, stored


def keyid(key) -> str:
    """The 16-hex key id of a test key."""
    return key.fingerprint[-16:]


async def verify(world: ForgeWorld, event) -> PushVerified | RunRejected:
    """Run the verifier (with the world's adapter) on one push; its one outcome."""
    (outcome,) = await Verifier(world.config).on_push(event)
    return outcome.payload


def setup_alice(world: ForgeWorld, keys, tmp_path, name: str = "alice/model"):
    """alice with her key registered, a project, and her clone of it."""
    world.register("alice", keys["alice"])
    world.register("bob", keys["bob"])
    world.repository(name)
    return world.clone("alice", keys["alice"], name, tmp_path / "clone")


async def test_a_push_of_25_commits_is_verified_in_full(world: ForgeWorld, keys, tmp_path):
    clone = setup_alice(world, keys, tmp_path)
    shas = [clone.commit() for _ in range(25)]
    clone.push()
    outcome = await verify(world, world.push_event("alice", "alice/model", ZERO, shas[-1]))
    assert isinstance(outcome, PushVerified), outcome
    assert outcome.commits == shas  # all 25, oldest first: more than any hook body lists
    assert outcome.researcher == "alice"
    assert outcome.keys == [keys["alice"].fingerprint]


async def test_old_unsigned_history_is_rejected_naming_the_commit(
    world: ForgeWorld, keys, tmp_path
):
    clone = setup_alice(world, keys, tmp_path)
    base = clone.commit()
    old = clone.commit(sign=False)
    clone.push()  # never verified: secd was not watching yet
    head = clone.commit()
    clone.push()
    outcome = await verify(world, world.push_event("alice", "alice/model", old, head))
    assert isinstance(outcome, RunRejected)
    assert outcome.commit == old != base
    assert outcome.reason.startswith(f"commit {old[:7]} is not signed")


async def test_verified_history_is_not_verified_again(world: ForgeWorld, keys, tmp_path):
    clone = setup_alice(world, keys, tmp_path)
    first = [clone.commit() for _ in range(3)]
    clone.push()
    assert (
        await verify(world, world.push_event("alice", "alice/model", ZERO, first[-1]))
    ).commits == first
    second = clone.commit()
    clone.push()
    outcome = await verify(world, world.push_event("alice", "alice/model", first[-1], second))
    assert isinstance(outcome, PushVerified) and outcome.commits == [second]


async def test_a_commit_signed_with_someone_elses_key_is_rejected(
    world: ForgeWorld, keys, tmp_path
):
    clone = setup_alice(world, keys, tmp_path)
    clone.commit()
    theirs = clone.commit(key=keys["bob"])
    clone.push()
    outcome = await verify(world, world.push_event("alice", "alice/model", ZERO, theirs))
    assert isinstance(outcome, RunRejected) and outcome.commit == theirs
    assert outcome.reason.startswith(f"commit {theirs[:7]} is signed by key {keyid(keys['bob'])}")
    assert "alice" in outcome.reason


async def test_a_pusher_without_keys_is_told_so(world: ForgeWorld, keys, tmp_path):
    world.repository("carol/model")
    world.register("carol", keys["alice"])
    if world.gitlab is not None:
        world.gitlab.remove_gpg_keys(world.users["carol"])
    else:
        for path in (world.config.path("keys") / "carol").iterdir():
            path.unlink()
    clone = world.clone("carol", keys["alice"], "carol/model", tmp_path / "clone")
    head = clone.commit()
    clone.push()
    outcome = await verify(world, world.push_event("carol", "carol/model", ZERO, head))
    assert isinstance(outcome, RunRejected)
    assert outcome.reason.startswith("carol has no registered GPG keys")


async def test_the_pushers_keys_are_the_registered_ones(world: ForgeWorld, keys, tmp_path):
    clone = setup_alice(world, keys, tmp_path)
    head = clone.commit()
    clone.push()
    event = world.push_event("alice", "alice/model", ZERO, head)
    source = Verifier(world.config).source
    push = event.event.payload
    assert source.researcher_of(push) == "alice"
    found = source.pusher_keys(push, "alice").keys_of("alice")
    assert [str(k.fingerprint).replace(" ", "") for k in found] == [keys["alice"].fingerprint]
    mirror = source.mirror(push)
    assert subprocess.run(
        ["git", "--git-dir", str(mirror), "cat-file", "-t", head],
        capture_output=True, text=True, check=True,
    ).stdout.strip() == "commit"  # fmt: skip


async def test_results_are_published_once_as_a_branch_on_the_head(
    world: ForgeWorld, keys, tmp_path
):
    from secd_publisher.forge import make_results_forge

    clone = setup_alice(world, keys, tmp_path)
    head = clone.commit()
    clone.push()
    push = world.push_event("alice", "alice/model", ZERO, head).event.payload
    big = tmp_path / "model.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    files = {"output/model.bin": big, "secd-manifest.json": b'{"ok": true}\n'}
    results = make_results_forge(world.config)
    commit = results.publish(push, "secd/r1", files, "secd: results\n", ("secd", "secd@x"))
    again = results.publish(push, "secd/r1", files, "secd: results\n", ("secd", "secd@x"))
    assert again == commit
    project = world.projects["alice/model"]
    bare = project if world.gitlab is None else project.repo

    def git(*args: str) -> bytes:
        return subprocess.run(
            ["git", "--git-dir", str(bare), *args], capture_output=True, check=True
        ).stdout

    assert git("rev-parse", "refs/heads/secd/r1").decode().strip() == commit
    assert git("rev-parse", f"{commit}^").decode().strip() == head
    assert git("show", f"{commit}:output/model.bin") == big.read_bytes()
    assert git("show", f"{commit}:secd-manifest.json") == b'{"ok": true}\n'


async def test_the_commit_status_moves_through_the_states(world: ForgeWorld, keys, tmp_path):
    from secd_publisher.forge import CommitStatus, make_results_forge

    clone = setup_alice(world, keys, tmp_path)
    head = clone.commit()
    clone.push()
    push = world.push_event("alice", "alice/model", ZERO, head).event.payload
    results = make_results_forge(world.config)
    assert results.status_of(push) is None
    results.set_status(push, CommitStatus("pending", "verifying"))
    assert results.status_of(push) == CommitStatus("pending", "verifying")
    results.set_status(push, CommitStatus("running", "building"))
    results.set_status(push, CommitStatus("running", "building"))  # a redelivery: no error
    assert results.status_of(push) == CommitStatus("running", "building")
    results.set_status(push, CommitStatus("failed", "rejected: 3f2a1c9 is not signed"))
    assert results.status_of(push) == CommitStatus("failed", "rejected: 3f2a1c9 is not signed")


async def test_a_pusher_who_cannot_be_a_researcher_is_rejected(world: ForgeWorld, keys, tmp_path):
    clone = setup_alice(world, keys, tmp_path)
    head = clone.commit()
    clone.push()
    event = world.push_event("alice", "alice/model", ZERO, head)
    # The embedded forge maps local accounts; GitLab's usernames must be valid researcher names.
    pusher = "acct-mallory" if world.gitlab is None else "9lives"
    payload = msgspec.structs.replace(event.event.payload, pusher=pusher)
    outcome = await verify(world, stored(payload, actor=pusher, project="alice/model"))
    assert isinstance(outcome, RunRejected) and outcome.commit is None
    assert repr(pusher) in outcome.reason
    assert outcome.unknown_pusher


async def test_nothing_is_written_into_the_repository_for_an_unknown_pusher(
    world: ForgeWorld, keys, tmp_path, nats_server, admin_bus
):
    from secd_publisher.forge import make_results_forge
    from secd_publisher.service import Publisher
    from secd_publisher.status import StatusReporter

    clone = setup_alice(world, keys, tmp_path)
    head = clone.commit()
    clone.push()
    pusher = "acct-mallory" if world.gitlab is None else "9lives"
    push = msgspec.structs.replace(
        world.push_event("alice", "alice/model", ZERO, head).event.payload, pusher=pusher
    )
    project = world.projects["alice/model"]
    bare = project if world.gitlab is None else project.repo

    def refs() -> str:
        return subprocess.run(
            ["git", "--git-dir", str(bare), "for-each-ref"], capture_output=True, check=True
        ).stdout.decode()

    before = refs()
    received = stored(push, actor=pusher, project="alice/model")
    (rejection,) = await Verifier(world.config).on_push(received)
    assert rejection.payload.unknown_pusher
    # Into the log as the gateway and the verifier would write them, then to the publisher.
    run_id = received.event.run_id
    await admin_bus.publish(received.event)
    await admin_bus.publish(
        new_event(
            rejection.payload, run_id=run_id, producer=producer_for("verifier"), actor=pusher,
            project="alice/model", cause=received.event, cause_data=received.data,
        )
    )  # fmt: skip
    forge = make_results_forge(world.config)
    bus = await nats_server.bus("publisher")
    try:
        statuses = StatusReporter(
            bus, forge, world.config.forge.results_prefix, accounts=world.config.forge.accounts
        )
        run = await admin_bus.read_run(run_id)
        for event in run:
            assert await statuses.on_event(event) == []
        assert await Publisher(world.config, bus, forge).on_ended(run[-1]) == []
    finally:
        await bus.close()
    assert refs() == before  # no results branch, no notes
    assert forge.status_of(push) is None
    if world.gitlab is not None:
        assert not any(world.gitlab.statuses.values())
