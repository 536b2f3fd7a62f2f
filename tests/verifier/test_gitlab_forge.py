"""What only the GitLab adapter does, against FakeGitLab (a local server answering like GitLab
API v4, repositories over real git smart HTTP): the token on the git side, GitLab's own
signature status, outages."""

from __future__ import annotations

import base64
import subprocess

import msgspec
import pytest

from secd_shared.events import RunRejected
from secd_shared.forge_git import ForgeGitError, GitMirrors
from secd_shared.worker import TransientError
from secd_verifier.service import Verifier
from tests.forgeworld import ZERO, ForgeWorld, no_secret_in, stored


@pytest.fixture
def world(tmp_path, gitlab):
    """Only the GitLab world (the contract tests cover both)."""
    from secd_shared.config import load_config

    path = tmp_path / "secd.toml"
    path.write_text(
        f'state_dir = "state"\n[forge]\nkind = "gitlab"\n[forge.gitlab]\nurl = "{gitlab.url}"\n'
    )
    config = load_config(path, {"SECD_FORGE__GITLAB__TOKEN": gitlab.admin_token})
    return ForgeWorld("gitlab", config, tmp_path, gitlab=gitlab)


def pushed(world: ForgeWorld, keys, tmp_path, **commit):
    """alice's project with one pushed commit; returns (clone, head)."""
    world.register("alice", keys["alice"])
    world.repository("alice/model")
    clone = world.clone("alice", keys["alice"], "alice/model", tmp_path / "clone")
    head = clone.commit(**commit)
    clone.push()
    return clone, head


def test_git_needs_the_token_and_never_shows_it(world: ForgeWorld, keys, tmp_path):
    _, head = pushed(world, keys, tmp_path)
    fake = world.gitlab
    wrong = "glpat-" + "x" * 24
    with pytest.raises(ForgeGitError) as refused:
        GitMirrors(tmp_path / "wrong", fake.url, wrong).fetch("alice/model")
    assert "Authentication failed" in str(refused.value)
    assert no_secret_in(str(refused.value), wrong, fake.admin_token)

    fake.requests.clear()
    mirror = GitMirrors(tmp_path / "mirrors", fake.url, fake.admin_token).fetch("alice/model")
    git = [r for r in fake.requests if ".git/" in r.target]
    # git asks without credentials, gets GitLab's 401, then the helper answers with the token.
    assert "authorization" not in git[0].headers
    basic = [r.headers["authorization"] for r in git if "authorization" in r.headers]
    assert basic and all(
        base64.b64decode(h.split()[1]).decode() == f"oauth2:{fake.admin_token}" for h in basic
    )
    assert all(no_secret_in(r.target, fake.admin_token) for r in fake.requests)
    config = subprocess.run(
        ["git", "--git-dir", str(mirror), "config", "--list", "--show-origin"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert no_secret_in(config + (mirror / "config").read_text(), fake.admin_token)
    assert "url" not in config  # no remote is recorded at all
    assert subprocess.run(
        ["git", "--git-dir", str(mirror), "rev-parse", "refs/heads/main"],
        capture_output=True, text=True, check=True,
    ).stdout.strip() == head  # fmt: skip


async def test_gitlab_must_call_the_signature_verified_too(world: ForgeWorld, keys, tmp_path):
    # Signed with alice's registered key, but committed with an address GitLab does not
    # know for her: secd's own check passes, GitLab's status is not 'verified'.
    _, head = pushed(world, keys, tmp_path, email="alice@elsewhere.example")
    (outcome,) = await Verifier(world.config).on_push(
        world.push_event("alice", "alice/model", ZERO, head)
    )
    assert isinstance(outcome.payload, RunRejected)
    assert outcome.payload.commit == head
    assert outcome.payload.reason.startswith(
        f"commit {head[:7]}: GitLab shows its signature as 'unverified', not 'verified'"
    )


async def test_a_gitlab_outage_is_retried_not_a_verdict(world: ForgeWorld, keys, tmp_path):
    _, head = pushed(world, keys, tmp_path)
    event = world.push_event("alice", "alice/model", ZERO, head)
    verifier = Verifier(world.config)
    world.gitlab.stop()
    with pytest.raises(TransientError) as caught:
        await verifier.on_push(event)
    assert no_secret_in(str(caught.value), world.gitlab.admin_token)


async def test_a_push_from_another_forge_is_rejected_not_verified(
    world: ForgeWorld, keys, tmp_path
):
    _, head = pushed(world, keys, tmp_path)
    event = world.push_event("alice", "alice/model", ZERO, head)
    embedded = msgspec.structs.replace(event.event.payload, forge="git")
    (outcome,) = await Verifier(world.config).on_push(
        stored(embedded, actor="alice", project="alice/model")
    )
    assert isinstance(outcome.payload, RunRejected)
    assert outcome.payload.reason.startswith(
        "the push came from forge 'git', but this verifier serves forge.kind = 'gitlab'"
    )
