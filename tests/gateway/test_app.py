"""The gateway against a real NATS and a real embedded forge (bare repositories made by secd,
real commits): good hooks become push.received, once per push; bad ones get a 4xx with a reason
and leave nothing in the log, nothing in the push bucket and nothing in any repository."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from secd_gateway.app import create_app
from secd_shared.config import Config, ForgeConfig, GatewayConfig
from secd_shared.forge import create_repository
from secd_shared.pushes import PUSH_STREAM, PushRegister, push_key
from secd_shared.stream import ensure_stream, stream_config
from tests.conftest import start_test_nats

TOKEN = "t" * 32
ZERO = "0" * 40
_GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/dev/null",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    **{f"GIT_{who}_{what}": "a@x" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")},
}


def git(repo: Path, *args: str, input: str | None = None) -> str:
    """Run git on a bare repository; its stdout."""
    done = subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        input=input, capture_output=True, text=True, env=_GIT_ENV, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def add_commit(repo: Path, branch: str = "main") -> str:
    """A new commit (its message unique to this call) on `branch`; its id."""
    tree = git(repo, "mktree", input="")
    commit = git(repo, "commit-tree", tree, "-m", f"work {uuid.uuid4()}")
    git(repo, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def refs_of(repo: Path) -> str:
    """Every ref of the repository and what it points at (notes included)."""
    return git(repo, "for-each-ref", "--format=%(objectname) %(refname)")


@dataclass
class Forge:
    """An embedded forge with alice/model (made by secd), one commit in it, and its config."""

    config: Config
    repo: Path
    head: str

    def body(self, **changes) -> dict:
        """A hook body for a push of the head to main by alice, with `changes`."""
        return {
            "repository": "alice/model",
            "ref": "refs/heads/main",
            "before": ZERO,
            "after": self.head,
            "pusher": "alice",
            **changes,
        }


@pytest.fixture
def forge(tmp_path) -> Forge:
    config = Config(
        state_dir=str(tmp_path),
        gateway=GatewayConfig(max_body_bytes=2048),
        forge=ForgeConfig(accounts={"alice": "alice"}),
    )
    token_file = tmp_path / "hook-token"
    token_file.write_text(TOKEN)
    root = config.path(config.forge.root)
    repo = create_repository(root, "alice/model", gateway_url="http://gw", token_file=token_file)
    return Forge(config, repo, add_commit(repo))


async def _client(bus, config: Config):
    app = create_app(config, bus, TOKEN)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


@pytest.fixture
async def client(nats_server, admin_bus, forge):
    bus = await nats_server.bus("gateway")
    async with await _client(bus, forge.config) as c:
        yield c
    await bus.close()


async def _counts(admin_bus) -> tuple[int, int]:
    """Messages in the log and records in the push bucket."""
    log = (await admin_bus.js.stream_info("SECD")).state.messages
    pushes = (await admin_bus.js.stream_info(PUSH_STREAM)).state.messages
    return log, pushes


async def _post(client, body, *, content_type: str | None = "application/json", token=TOKEN):
    headers = {"X-Secd-Token": token}
    if content_type is not None:
        headers["Content-Type"] = content_type
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post("/hooks/git", content=content, headers=headers)


async def test_a_good_hook_becomes_push_received(client, admin_bus, forge):
    response = await _post(client, forge.body())
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    (stored,) = await admin_bus.read_run(run_id)
    assert stored.event.type == "push.received"
    assert stored.event.payload.after == forge.head and stored.event.actor == "alice"
    shown = (await client.get(f"/runs/{run_id}")).json()
    assert shown["status"] == "received" and shown["project"] == "alice/model"
    listed = (await client.get("/runs")).json()["runs"]
    assert run_id in [r["run_id"] for r in listed]
    assert (await client.get("/healthz")).json() == {"ok": True}


@pytest.mark.parametrize(
    ("token", "changes", "raw", "status", "reason"),
    [
        ("", {}, None, 401, "X-Secd-Token"),
        ("t" * 31, {}, None, 401, "X-Secd-Token"),
        (TOKEN, {}, b"{not json", 400, "not JSON"),
        (TOKEN, {"after": "zz"}, None, 422, "after"),
        (TOKEN, {"extra": 1}, None, 422, "extra"),
        (TOKEN, {"ref": None}, None, 422, "ref"),
        (TOKEN, {"repository": "../etc"}, None, 422, "repository name"),
        (TOKEN, {"ref": "refs/heads/a;rm -rf"}, None, 422, "contains a space"),
        (TOKEN, {"pusher": "Robert'); DROP"}, None, 422, "pusher"),
        (TOKEN, {"ref": "refs/heads/" + "x" * 5000}, None, 413, "larger than"),
    ],
)
async def test_bad_hooks_get_a_reason_and_leave_nothing_in_the_log(
    client, admin_bus, forge, token, changes, raw, status, reason
):
    before = await _counts(admin_bus)
    body = raw if raw is not None else forge.body(**changes)
    if changes.get("ref", "") is None:
        del body["ref"]
    response = await _post(client, body, token=token)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert await _counts(admin_bus) == before


@pytest.mark.parametrize("field", ["repository", "ref", "before", "after", "pusher"])
async def test_a_trailing_newline_in_any_field_is_refused(client, admin_bus, forge, field):
    # A pattern ending in `$` matches before a final newline; every field is matched exactly.
    before = await _counts(admin_bus)
    body = forge.body()
    body[field] += "\n"
    response = await _post(client, body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"] or "repository name" in response.json()["detail"]
    assert await _counts(admin_bus) == before
    assert (await _post(client, forge.body())).status_code == 202


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("refs/heads//secd/x", "empty component"),
        ("refs/heads/./secd/x", "starts with '.'"),
        ("refs/heads/secd/../main", "'..'"),
        ("refs/heads/secd/x.lock", "'.lock'"),
        ("refs/heads/secd/x/", "empty component"),
        ("refs/heads/main.", "ends with '.'"),
        ("refs/heads/a@{1}", "'@{'"),
        ("refs/heads/a\\b", "'\\\\'"),
        ("refs/heads/a\tb", "0x09"),
        ("refs/heads/a~1", "'~'"),
        ("refs/heads/", "not a branch"),
        ("refs/notes/secd", "not a branch"),
        ("refs/heads/m\u0430in", "ASCII only"),
        ("refs/heads/" + "x" * 250, "longer than 255"),
    ],
)
async def test_refs_git_would_refuse_are_refused(client, admin_bus, forge, ref, problem):
    before = await _counts(admin_bus)
    response = await _post(client, forge.body(ref=ref))
    assert response.status_code == 422, response.text
    assert problem in response.json()["detail"]
    assert await _counts(admin_bus) == before
    assert "secd/" not in refs_of(forge.repo)


@pytest.mark.parametrize("ref", ["refs/heads/feature+x", "refs/heads/a/b-c_d.e", "refs/tags/v1.0"])
async def test_refs_git_takes_are_taken(client, admin_bus, forge, ref):
    response = await _post(client, forge.body(ref=ref))
    assert response.status_code == 202, response.text
    (stored,) = await admin_bus.read_run(response.json()["run_id"])
    assert stored.event.payload.ref == ref


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1",
     "application/jsonp", "application/json; boundary=x"],
)  # fmt: skip
async def test_only_json_is_taken(client, admin_bus, forge, content_type):
    before = await _counts(admin_bus)
    response = await _post(client, forge.body(), content_type=content_type)
    assert response.status_code == 415, response.text
    assert "Content-Type must be application/json" in response.json()["detail"]
    assert await _counts(admin_bus) == before


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=UTF-8"])
async def test_json_with_or_without_its_charset_is_taken(client, forge, content_type):
    response = await _post(client, forge.body(), content_type=content_type)
    assert response.status_code == 202, response.text


async def test_the_same_push_sent_again_is_one_run(client, admin_bus, forge):
    first = await _post(client, forge.body())
    assert first.status_code == 202
    run_id = first.json()["run_id"]
    before = await _counts(admin_bus)
    again = await _post(client, forge.body())
    assert again.status_code == 200, again.text
    assert again.json()["run_id"] == run_id and again.json()["duplicate"] is True
    assert f"already received as run {run_id}" in again.json()["detail"]
    # Sent five times at once: still that one run.
    answers = await asyncio.gather(*(_post(client, forge.body()) for _ in range(5)))
    assert {a.json()["run_id"] for a in answers} == {run_id}
    assert await _counts(admin_bus) == before
    assert len(await admin_bus.read_run(run_id)) == 1
    # Another push (a new head, or the same head to another branch) is another run.
    other = await _post(client, forge.body(ref="refs/heads/other"))
    assert other.status_code == 202 and other.json()["run_id"] != run_id


async def test_concurrent_first_sends_of_one_push_are_one_run(client, admin_bus, forge):
    answers = await asyncio.gather(*(_post(client, forge.body()) for _ in range(8)))
    run_ids = {a.json()["run_id"] for a in answers}
    assert len(run_ids) == 1, run_ids
    (run_id,) = run_ids
    assert len(await admin_bus.read_run(run_id)) == 1
    assert sorted(a.status_code for a in answers).count(202) >= 1


async def test_a_push_is_one_run_after_the_duplicate_window_and_a_restart(tmp_path, forge):
    # A server of this test's own whose log forgets message ids after one second: what stops
    # the second run is the push bucket, not JetStream's duplicate window.
    server = start_test_nats(tmp_path / "nats")
    try:
        admin = await server.bus("secd-admin")
        config = stream_config()
        config.duplicate_window = 1.0
        await admin.js.add_stream(config)
        await ensure_stream(admin.js)
        gateway = await server.bus("gateway")
        async with await _client(gateway, forge.config) as c:
            first = await _post(c, forge.body())
        await gateway.close()
        await asyncio.sleep(1.5)
        # A new gateway process (nothing kept in memory), after the window.
        gateway = await server.bus("gateway")
        async with await _client(gateway, forge.config) as c:
            again = await _post(c, forge.body())
        await gateway.close()
        assert first.status_code == 202 and again.status_code == 200, again.text
        assert again.json()["run_id"] == first.json()["run_id"]
        assert (await admin.js.stream_info("SECD")).state.messages == 1
        await admin.close()
    finally:
        server.stop()


async def test_a_push_recorded_but_never_logged_is_started_when_sent_again(
    nats_server, client, admin_bus, forge
):
    # A gateway that stopped between the record and the event: the resend starts that run.
    gateway = await nats_server.bus("gateway")
    key = push_key("git", "alice/model", "refs/heads/main", ZERO, forge.head)
    recorded = await PushRegister(gateway).claim(key, "r00000000000000000aa")
    await gateway.close()
    assert recorded == "r00000000000000000aa"
    response = await _post(client, forge.body())
    assert response.status_code == 202, response.text
    assert response.json()["run_id"] == recorded
    (stored,) = await admin_bus.read_run(recorded)
    assert stored.event.payload.after == forge.head


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"repository": "bob/model"}, 422, "repository 'bob/model' does not exist"),
        ({"after": "f" * 40}, 422, "commit ffffffffffff is not in repository 'alice/model'"),
        ({"pusher": "mallory"}, 403, "'mallory' that pushed is not mapped to a researcher"),
    ],
)
async def test_an_unknown_repository_commit_or_pusher_is_refused(
    client, admin_bus, forge, changes, status, reason
):
    before, refs = await _counts(admin_bus), refs_of(forge.repo)
    response = await _post(client, forge.body(**changes))
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert await _counts(admin_bus) == before
    assert refs_of(forge.repo) == refs


async def test_a_repository_secd_did_not_make_is_refused(client, admin_bus, forge):
    # A bare repository without secd's hook (made by hand, or by someone else) takes no runs.
    root = forge.config.path(forge.config.forge.root)
    other = root / "alice" / "other.git"
    subprocess.run(["git", "init", "-q", "--bare", str(other)], check=True, env=_GIT_ENV)
    head = add_commit(other)
    before = await _counts(admin_bus)
    response = await _post(client, forge.body(repository="alice/other", after=head))
    assert response.status_code == 422, response.text
    assert "was not made by secd" in response.json()["detail"]
    assert await _counts(admin_bus) == before


async def test_results_branches_and_deletions_never_start_a_run(client, admin_bus, forge):
    before = await _counts(admin_bus)
    for body in (forge.body(ref="refs/heads/secd/r1"), forge.body(after=ZERO)):
        response = await _post(client, body)
        assert response.status_code == 200 and "run_id" not in response.json()
    assert await _counts(admin_bus) == before


async def test_unknown_runs_are_404(client):
    assert (await client.get("/runs/r0000000000000000000")).status_code == 404
    assert (await client.get("/runs/..%2F..")).status_code == 404
    assert (await client.get("/runs/r0000000000000000000%0A")).status_code == 404
