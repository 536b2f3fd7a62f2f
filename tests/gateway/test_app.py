"""The gateway against a real NATS: good hooks become push.received; bad ones get a 4xx with a
reason and leave nothing in the log."""

from __future__ import annotations

import json

import httpx
import pytest

from secd_gateway.app import create_app
from secd_shared.config import Config, GatewayConfig

TOKEN = "t" * 32
GOOD = {
    "repository": "alice/model",
    "ref": "refs/heads/main",
    "before": "0" * 40,
    "after": "a" * 40,
    "pusher": "alice",
}


@pytest.fixture
async def client(nats_server, admin_bus):
    bus = await nats_server.bus("gateway")
    app = create_app(Config(gateway=GatewayConfig(max_body_bytes=2048)), bus, TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c
    await bus.close()


async def _count(admin_bus) -> int:
    return (await admin_bus.js.stream_info("SECD")).state.messages


async def test_a_good_hook_becomes_push_received(client, admin_bus):
    response = await client.post("/hooks/git", json=GOOD, headers={"X-Secd-Token": TOKEN})
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    (stored,) = await admin_bus.read_run(run_id)
    assert stored.event.type == "push.received"
    assert stored.event.payload.after == "a" * 40 and stored.event.actor == "alice"
    shown = (await client.get(f"/runs/{run_id}")).json()
    assert shown["status"] == "received" and shown["project"] == "alice/model"
    listed = (await client.get("/runs")).json()["runs"]
    assert run_id in [r["run_id"] for r in listed]
    assert (await client.get("/healthz")).json() == {"ok": True}


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({}, GOOD, 401, "X-Secd-Token"),
        ({"X-Secd-Token": "t" * 31}, GOOD, 401, "X-Secd-Token"),
        ({"X-Secd-Token": TOKEN}, b"{not json", 400, "not JSON"),
        ({"X-Secd-Token": TOKEN}, {**GOOD, "after": "zz"}, 422, "after"),
        ({"X-Secd-Token": TOKEN}, {**GOOD, "extra": 1}, 422, "extra"),
        ({"X-Secd-Token": TOKEN}, {k: v for k, v in GOOD.items() if k != "ref"}, 422, "ref"),
        ({"X-Secd-Token": TOKEN}, {**GOOD, "repository": "../etc"}, 422, "repository name"),
        ({"X-Secd-Token": TOKEN}, {**GOOD, "ref": "refs/heads/a;rm -rf"}, 422, "ref"),
        ({"X-Secd-Token": TOKEN}, {**GOOD, "pusher": "Robert'); DROP"}, 422, "pusher"),
        ({"X-Secd-Token": TOKEN}, {**GOOD, "ref": "x" * 5000}, 413, "larger than"),
    ],
)
async def test_bad_hooks_get_a_reason_and_leave_nothing_in_the_log(
    client, admin_bus, headers, body, status, reason
):
    before = await _count(admin_bus)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(
        "/hooks/git", content=content, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert reason in response.json()["detail"]
    assert await _count(admin_bus) == before


async def test_results_branches_and_deletions_never_start_a_run(client, admin_bus):
    before = await _count(admin_bus)
    for body in ({**GOOD, "ref": "refs/heads/secd/r1"}, {**GOOD, "after": "0" * 40}):
        response = await client.post("/hooks/git", json=body, headers={"X-Secd-Token": TOKEN})
        assert response.status_code == 200 and "run_id" not in response.json()
    assert await _count(admin_bus) == before


async def test_unknown_runs_are_404(client):
    assert (await client.get("/runs/r0000000000000000000")).status_code == 404
    assert (await client.get("/runs/..%2F..")).status_code == 404
