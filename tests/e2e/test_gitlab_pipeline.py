"""The whole of secd with forge = "gitlab" and identity = "keycloak", every service its own
process, against FakeGitLab and FakeKeycloak (local servers that answer like GitLab API v4 and
the Keycloak admin API; repositories over real git smart HTTP). Not verified against the real
GitLab or Keycloak.

A researcher pushes over HTTPS-like smart HTTP with their own token; GitLab's system hook (which
lists no commits) reaches the gateway; the run's progress appears as the commit status; the
results come back with `git push`; no secret appears anywhere it should not.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess

import asyncpg
import pytest

from secd.audit import open_log
from secd.stack import Stack
from secd_shared.forge_git import git_environment
from secd_shared.runs import fold_run
from tests.fakes.gitlab import FakeGitLab
from tests.fakes.keycloak import FakeKeycloak
from tests.forgeworld import Clone, no_secret_in
from tests.gpghelp import git_env
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(240)

SECD_YML = "runfor: 0.05\noutputs: [{path: hello.txt, kind: text}]\n"
JOB = """\
import os
from pathlib import Path
Path(os.environ["OUTPUT_PATH"], "hello.txt").write_text("hello from the sandbox\\n")
print("job done", flush=True)
"""


class World:
    """The stack, the fakes, alice's clone, and the secrets to look for."""

    def __init__(self, stack: Stack, gitlab: FakeGitLab, keycloak: FakeKeycloak, hook: str):
        self.stack, self.gitlab, self.keycloak, self.hook_secret = stack, gitlab, keycloak, hook
        self.project = gitlab.projects[min(gitlab.projects)]
        self.clone: Clone | None = None

    def secrets(self) -> list[str]:
        """Every secret secd was given."""
        return [self.gitlab.admin_token, self.hook_secret, self.keycloak.client_secret]


@pytest.fixture(scope="module")
async def world(tmp_path_factory, keys):
    root = tmp_path_factory.mktemp("gitlab-stack")
    gitlab = FakeGitLab(root / "fake-gitlab").start()
    keycloak = FakeKeycloak().start()
    alice = gitlab.add_user("alice", "Alice", "alice@example.org")
    gitlab.add_gpg_key(alice, keys[0].public_armor)
    member = keycloak.add_user("alice", ["/secd/postgres-patients-read", "/staff"])
    gitlab.add_identity(alice, "openid_connect", member.id)
    gitlab.add_project("alice/model")
    hook_secret = secrets.token_urlsafe(24)
    token = {"SECD_FORGE__GITLAB__TOKEN": gitlab.admin_token}
    stack = Stack(
        root / "state",
        ack_wait_s=3.0,
        extra_config={
            "forge": {
                "kind": "gitlab",
                "gitlab": {"url": gitlab.url, "service_username": gitlab.service.username},
            },
            "identity": {
                "kind": "keycloak",
                "keycloak": {
                    "url": keycloak.url,
                    "realm": keycloak.realm,
                    "client_id": keycloak.client_id,
                    "group_root": "/secd",
                },
            },
        },
        extra_env={
            # The gateway asks the identity port who holds the officers' role: with Keycloak
            # it needs GitLab's token and Keycloak's client secret too (operator.md).
            "gateway": {
                **token,
                "SECD_FORGE__GITLAB__WEBHOOK_SECRET": hook_secret,
                "SECD_IDENTITY__KEYCLOAK__CLIENT_SECRET": keycloak.client_secret,
            },
            "verifier": token,
            "builder": token,
            "publisher": token,
            "credentials": {
                **token,
                "SECD_IDENTITY__KEYCLOAK__CLIENT_SECRET": keycloak.client_secret,
            },
        },
    )
    stack.prepare()
    gitlab.add_system_hook(f"{stack.gateway_url}/hooks/gitlab", hook_secret)
    await stack.start()
    conn = await asyncpg.connect(**stack.postgres_admin_dsn())
    await conn.execute("CREATE TABLE patients (id int); INSERT INTO patients VALUES (1), (2);")
    await conn.close()
    built = World(stack, gitlab, keycloak, hook_secret)
    built.clone = Clone(
        root / "clone",
        keys[0],
        gitlab.clone_url(built.project),
        {**git_env(keys[0]), **git_environment(gitlab.url, alice.token)},
    )
    yield built
    await stack.stop()
    keycloak.stop()
    gitlab.stop()


async def run_for(world: World, head: str, until: str, timeout: float = 120):
    """The events of the run for pushed head `head`, once one of type `until` is in the log."""
    bus = await open_log(world.stack.state_dir)
    try:

        async def find():
            async for stored in bus.read("secd.run.*.push_received"):
                if stored.event.payload.after == head:
                    run = await bus.read_run(stored.event.run_id)
                    if any(s.event.type == until for s in run):
                        return [s.event for s in run]
            return None

        return await wait_until(find, timeout=timeout, interval=0.1)
    finally:
        await bus.close()


def states(world: World, head: str) -> list[str]:
    """The commit status states GitLab took for `head`, in order, repeats folded."""
    seen: list[str] = []
    for sha, state, _ in world.gitlab.status_history:
        if sha == head and (not seen or seen[-1] != state):
            seen.append(state)
    return seen


async def test_a_signed_push_of_25_commits_runs_and_its_status_follows(world: World):
    clone = world.clone
    assert clone is not None
    shas = [clone.commit() for _ in range(24)]
    for name, text in {"main.py": JOB, "secd.yml": SECD_YML}.items():
        (clone.path / name).write_text(text)
    shas.append(clone.commit())
    clone.push()
    head = shas[-1]
    (delivery,) = world.gitlab.wait_deliveries(1)
    assert delivery["status"] == 202
    assert b'"commits": []' in delivery["body"]  # a system hook lists none of the 25

    events = await run_for(world, head, "results.published")
    view = fold_run(events[0].run_id, events)
    assert view.outcome == "succeeded", (view.reason, view.log_tail)
    assert view.commits == shas  # every one of the 25 verified
    assert view.granted == ["patients"]  # from the Keycloak group /secd/postgres-patients-read

    async def final() -> bool:
        return states(world, head)[-1:] == ["success"]

    await wait_until(final, timeout=30)
    assert states(world, head) == ["pending", "running", "success"]
    latest = world.gitlab.latest_status(world.project, head)
    assert latest["description"] == f"finished; results on branch secd/{view.run_id}"
    assert latest["ref"] == "main"

    # The results branch came back with `git push`, on top of the pushed head.
    def show(what: str) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(world.project.repo), "show", what],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    assert show(f"{view.branch}:output/hello.txt") == "hello from the sandbox\n"
    assert "job done" in show(f"{view.branch}:secd-run.log")
    assert show(f"{view.branch}^:secd.yml") == SECD_YML
    # secd's own push of the results branch started no run.
    await asyncio.sleep(0.5)
    assert all(d["status"] == 200 for d in world.gitlab.deliveries[1:])


async def test_a_push_over_old_unsigned_history_is_rejected_and_the_status_says_why(
    world: World,
):
    clone = world.clone
    assert clone is not None
    hooks, world.gitlab.system_hooks = world.gitlab.system_hooks, []
    old = clone.commit(sign=False)
    clone.push()  # while secd did not hear of it: never verified
    world.gitlab.wait_deliveries(len(world.gitlab.deliveries))
    world.gitlab.system_hooks = hooks
    head = clone.commit()
    clone.push()

    events = await run_for(world, head, "results.published")
    rejected = next(e.payload for e in events if e.type == "run.rejected")
    assert rejected.commit == old
    assert rejected.reason.startswith(f"commit {old[:7]} is not signed")
    assert not any(e.type == "build.succeeded" for e in events)

    async def final() -> bool:
        return states(world, head)[-1:] == ["failed"]

    await wait_until(final, timeout=30)
    description = world.gitlab.latest_status(world.project, head)["description"]
    assert description.startswith(f"rejected: {old[:7]} is not signed")


async def test_no_secret_appears_in_events_logs_urls_or_mirrors(world: World):
    bus = await open_log(world.stack.state_dir)
    try:
        every_event = b"".join([s.data async for s in bus.read()])
    finally:
        await bus.close()
    assert b"push.verified" in every_event and b"run.rejected" in every_event
    secrets_given = world.secrets()
    assert no_secret_in(every_event, *secrets_given)
    state = world.stack.state_dir
    for log in (state / "logs").iterdir():
        assert no_secret_in(log.read_bytes(), *secrets_given), log.name
    configs = list(state.glob("*/mirrors/**/config"))
    assert {p.relative_to(state).parts[0] for p in configs} >= {"verifier", "builder", "publisher"}
    for config in [*configs, state / "secd.toml"]:
        assert no_secret_in(config.read_bytes(), *secrets_given), config
    for fake in (world.gitlab, world.keycloak):
        for request in fake.requests:
            assert no_secret_in(request.target, *secrets_given), request.target
