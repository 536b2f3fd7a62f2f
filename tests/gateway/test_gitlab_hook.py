"""The gateway's GitLab hook against a real NATS: pushes become push.received, once per push;
everything else is ignored (2xx) or refused (4xx, with a reason) and leaves nothing in the log."""

from __future__ import annotations

import asyncio
import json
import secrets

import httpx
import pytest

from secd_gateway.app import create_app
from secd_shared.config import Config, ForgeConfig, GitLabConfig
from secd_shared.pushes import PUSH_STREAM

SECRET = "s" * 32
HEAD = "b" * 40
# A system hook's push event, as GitLab documents it (system hooks list no commits).
PUSH = {
    "object_kind": "push",
    "event_name": "push",
    "before": "0" * 40,
    "after": HEAD,
    "ref": "refs/heads/main",
    "checkout_sha": HEAD,
    "user_id": 4,
    "user_name": "Alice",
    "user_username": "Alice",
    "user_email": "",
    "project_id": 15,
    "project": {"id": 15, "name": "model", "path_with_namespace": "alice/model"},
    "commits": [],
    "total_commits_count": 25,
}
GOOD = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "System Hook"}


@pytest.fixture
async def client(nats_server, admin_bus):
    bus = await nats_server.bus("gateway")
    config = Config(
        forge=ForgeConfig(
            kind="gitlab",
            gitlab=GitLabConfig(
                url="https://gitlab.example.org", max_hook_bytes=4096, service_username="secd-bot"
            ),
        )
    )
    app = create_app(config, bus, "", gitlab_secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c
    await bus.close()


async def _count(admin_bus) -> int:
    """Messages in the log plus records in the push bucket."""
    log = (await admin_bus.js.stream_info("SECD")).state.messages
    return log + (await admin_bus.js.stream_info(PUSH_STREAM)).state.messages


def _fresh_push(**changes) -> dict:
    """PUSH with a head of its own (the suite shares one NATS, and a push starts one run)."""
    head = secrets.token_hex(20)
    return {**PUSH, "after": head, "checkout_sha": head, **changes}


@pytest.mark.parametrize("event", ["System Hook", "Push Hook"])
async def test_a_push_becomes_push_received_with_gitlabs_ids(client, admin_bus, event):
    body = _fresh_push()
    if event == "Push Hook":
        body["commits"] = [{"id": body["after"], "message": "x"}]
    response = await client.post(
        "/hooks/gitlab", json=body, headers={**GOOD, "X-Gitlab-Event": event}
    )
    assert response.status_code == 202, response.text
    (stored,) = await admin_bus.read_run(response.json()["run_id"])
    push = stored.event.payload
    assert (push.forge, push.repository, push.ref, push.after) == (
        "gitlab", "alice/model", "refs/heads/main", body["after"],
    )  # fmt: skip
    assert (push.pusher, push.forge_user_id, push.forge_project_id) == ("alice", 4, 15)
    assert stored.event.actor == "alice" and stored.event.project == "alice/model"


@pytest.mark.parametrize(
    ("headers", "body", "detail"),
    [
        ({**GOOD, "X-Gitlab-Event": "Merge Request Hook"}, PUSH, "'Merge Request Hook' events"),
        ({**GOOD, "X-Gitlab-Event": "Tag Push Hook"}, PUSH, "'Tag Push Hook' events"),
        (GOOD, {**PUSH, "event_name": "user_create", "object_kind": None}, "'user_create'"),
        (GOOD, {**PUSH, "event_name": "tag_push"}, "'tag_push' events"),
        (GOOD, {**PUSH, "after": "0" * 40}, "branch deleted"),
        (GOOD, {**PUSH, "ref": "refs/heads/secd/r0123"}, "results branch"),
        (GOOD, {**PUSH, "user_username": "secd-bot"}, "secd's own account"),
    ],
)
async def test_other_events_are_answered_and_ignored(client, admin_bus, headers, body, detail):
    before = await _count(admin_bus)
    response = await client.post("/hooks/gitlab", json=body, headers=headers)
    assert response.status_code == 200
    assert response.json()["detail"].startswith("ignored: ")
    assert detail in response.json()["detail"]
    assert await _count(admin_bus) == before


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"X-Gitlab-Event": "System Hook"}, PUSH, 401, "X-Gitlab-Token"),
        ({**GOOD, "X-Gitlab-Token": SECRET[:-1]}, PUSH, 401, "X-Gitlab-Token"),
        ({"X-Gitlab-Token": SECRET}, PUSH, 400, "X-Gitlab-Event"),
        (GOOD, b"{not json", 400, "not JSON"),
        (GOOD, b"[1, 2]", 422, "JSON object"),
        (GOOD, {k: v for k, v in PUSH.items() if k != "user_id"}, 422, "user_id"),
        (GOOD, {**PUSH, "after": "zz"}, 422, "after"),
        (GOOD, {**PUSH, "user_id": "4"}, 422, "user_id"),
        (GOOD, {**PUSH, "project_id": 16}, 422, "project_id and project.id differ"),
        (GOOD, {**PUSH, "ref": "refs/heads/a;rm -rf /"}, 422, "ref"),
        (GOOD, {**PUSH, "project": {"id": 15, "path_with_namespace": "../etc"}}, 422, "repository"),
        (GOOD, {**PUSH, "user_username": "Robert'); DROP"}, 422, "user_username"),
        (GOOD, {**PUSH, "padding": "x" * 5000}, 413, "larger than"),
    ],
)
async def test_bad_hooks_get_a_reason_and_leave_nothing_in_the_log(
    client, admin_bus, headers, body, status, reason
):
    before = await _count(admin_bus)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(
        "/hooks/gitlab", content=content, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert await _count(admin_bus) == before


async def test_the_embedded_forges_hook_is_off_with_gitlab(client, admin_bus):
    before = await _count(admin_bus)
    response = await client.post("/hooks/git", json={}, headers={"X-Secd-Token": ""})
    assert response.status_code == 404
    assert await _count(admin_bus) == before


async def _post(client, body, content_type: str | None = "application/json", event="System Hook"):
    headers = {**GOOD, "X-Gitlab-Event": event}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return await client.post("/hooks/gitlab", content=json.dumps(body).encode(), headers=headers)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                     "application/json; charset=utf-16"],
)  # fmt: skip
async def test_only_json_is_taken(client, admin_bus, content_type):
    before = await _count(admin_bus)
    response = await _post(client, _fresh_push(), content_type)
    assert response.status_code == 415, response.text
    assert "Content-Type must be application/json" in response.json()["detail"]
    assert await _count(admin_bus) == before
    good = await _post(client, _fresh_push(), "application/json; charset=utf-8")
    assert good.status_code == 202, good.text


@pytest.mark.parametrize("field", ["ref", "before", "after", "user_username", "project"])
async def test_a_trailing_newline_in_any_field_is_refused(client, admin_bus, field):
    before = await _count(admin_bus)
    body = _fresh_push()
    if field == "project":
        body["project"] = {**body["project"], "path_with_namespace": "alice/model\n"}
    else:
        body[field] += "\n"
    response = await _post(client, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert (field if field != "project" else "repository name") in detail
    assert await _count(admin_bus) == before


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("refs/heads//secd/x", "empty component"),
        ("refs/heads/./secd/x", "starts with '.'"),
        ("refs/heads/secd/x.lock", "'.lock'"),
        ("refs/tags/v1..2", "'..'"),
    ],
)
async def test_refs_git_would_refuse_are_refused(client, admin_bus, ref, problem):
    before = await _count(admin_bus)
    response = await _post(client, _fresh_push(ref=ref))
    assert response.status_code == 422, response.text
    assert problem in response.json()["detail"]
    assert await _count(admin_bus) == before


async def test_the_same_push_from_both_hooks_and_resent_is_one_run(client, admin_bus):
    body = _fresh_push()
    first = await _post(client, body, event="System Hook")
    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    before = await _count(admin_bus)
    # The project's push hook for the same push, and GitLab's retries of both, at once.
    answers = await asyncio.gather(
        _post(client, body, event="Push Hook"),
        *(_post(client, body) for _ in range(3)),
    )
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["run_id"] == run_id and answer.json()["duplicate"] is True
        assert "already received" in answer.json()["detail"]
    assert await _count(admin_bus) == before
    assert len(await admin_bus.read_run(run_id)) == 1
