"""The gateway's runs view (secd_gateway.projection) against a real NATS: it equals fold_run of
the log for runs in every state, shows each event as soon as it is stored, lists newest first
with limit and researcher, answers while it is still reading the log, and catches up after a
restart of the gateway and of the NATS server."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest

from secd.nats_server import free_port, start_nats, write_nats_config
from secd_gateway import projection as projection_module
from secd_gateway.app import create_app
from secd_gateway.projection import ProjectionLoading, RunProjection
from secd_shared.bus import EventBus, connect
from secd_shared.config import Config, NatsConfig
from secd_shared.events import (
    EventDecodeError,
    Producer,
    RunFailed,
    encode_event,
    new_event,
    new_run_id,
    subject_for,
)
from secd_shared.identities import BOOTSTRAP_USER
from secd_shared.runs import fold_run, fold_runs
from secd_shared.stream import ensure_log_stream, ensure_stream
from tests.auditruns import Stored
from tests.auditruns import build_run as _build_run
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN = "t" * 32


def build_run(**options) -> list[Stored]:
    """tests.auditruns.build_run with a run id the gateway takes."""
    return _build_run(run_id=new_run_id(), **options)


def _failed_run(**options) -> list[Stored]:
    """A run that fails in the executor after it started (with its job's last lines)."""
    started = build_run(**options)[:5]
    cause = started[-1]
    event = new_event(
        RunFailed(stage="executor", reason="the job exited with code 3", exit_code=3,
                  log_tail="Traceback ...\nValueError: bad\n"),
        run_id=cause.event.run_id, producer=Producer("executor", "test"),
        actor=cause.event.actor, project=cause.event.project,
        cause=cause.event, cause_data=cause.data,
    )  # fmt: skip
    event = msgspec.structs.replace(event, time=cause.event.time + timedelta(seconds=1))
    return [*started, Stored(subject_for(event.run_id, event.type), encode_event(event), event)]


def _runs_in_every_state(researcher: str) -> dict[str, list[Stored]]:
    """One run per status (and one revoked but not yet published), by what it shows."""
    whole = build_run(researcher=researcher, project=f"{researcher}/model")
    runs = {
        status: build_run(researcher=researcher, project=f"{researcher}/model")[:length]
        for status, length in [
            ("received", 1), ("verified", 2), ("built", 3), ("starting", 4), ("running", 5),
            ("finished", 6), ("revoked", 7),
        ]
    }  # fmt: skip
    runs["published"] = whole
    runs["rejected"] = build_run(researcher=researcher, rejected=True)[:2]
    runs["rejected-published"] = build_run(researcher=researcher, rejected=True)
    runs["failed"] = _failed_run(researcher=researcher)
    # Pushed by a forge account that maps to another name: the actor changes at push.verified.
    runs["mapped"] = build_run(researcher=researcher, pusher=f"acct-{researcher}")
    return runs


async def _write(js, events: list[Stored]) -> int:
    """Store events in order; the stream sequence of the last."""
    seq = 0
    for stored in events:
        ack = await js.publish(
            stored.subject,
            stored.data,
            headers={"Nats-Msg-Id": f"{stored.event.run_id}.{stored.event.type}"},
        )
        seq = ack.seq
    return seq


def _client(bus: EventBus, tmp_path) -> httpx.AsyncClient:
    app = create_app(Config(state_dir=str(tmp_path)), bus, TOKEN)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    client.projection = app.state.projection
    return client


async def _log_views(admin_bus) -> dict:
    """fold_runs of every event in the log (messages that are not events left out), as JSON."""
    events = []
    async for stored in admin_bus.read():
        try:
            events.append(stored.event)
        except EventDecodeError:
            pass
    return {run_id: _jsonable(view) for run_id, view in fold_runs(events).items()}


def _jsonable(view) -> dict:
    return json.loads(json.dumps(view.as_dict()))


def _newest_first(views: dict) -> list[dict]:
    def key(v):
        return (datetime.fromisoformat(v["created"]).timestamp(), v["run_id"])

    return sorted(views.values(), key=key, reverse=True)


@pytest.fixture
async def gateway(nats_server, admin_bus, tmp_path):
    bus = await nats_server.bus("gateway")
    async with _client(bus, tmp_path) as client:
        # Read the log once, so the tests below exercise the view, not the fallback.
        assert (await client.get("/runs?limit=1")).status_code == 200
        assert client.projection.loaded
        yield client
    await bus.close()


async def test_the_view_equals_fold_run_of_the_log_for_runs_in_every_state(gateway, admin_bus):
    researcher = f"res{uuid.uuid4().hex[:8]}"
    runs = _runs_in_every_state(researcher)
    for events in runs.values():
        await _write(admin_bus.js, events)
    for expected_status, events in runs.items():
        run_id = events[0].event.run_id
        shown = (await gateway.get(f"/runs/{run_id}")).json()
        expected = fold_run(run_id, [s.event for s in await admin_bus.read_run(run_id)])
        assert shown == _jsonable(expected), expected_status
        if expected_status in ("revoked", "rejected-published", "mapped"):
            continue
        assert shown["status"] == expected_status
    assert (await gateway.get(f"/runs/{runs['revoked'][0].event.run_id}")).json()[
        "credentials_revoked"
    ]
    # And the whole log: every run in it, as the old full scan folded them, in its order.
    listed = (await gateway.get("/runs?limit=1000")).json()["runs"]
    assert listed == _newest_first(await _log_views(admin_bus))[:1000]


async def test_a_run_s_view_follows_its_events_as_they_are_stored(gateway, admin_bus):
    events = _failed_run(researcher="follower")
    run_id = events[0].event.run_id
    for n in range(1, len(events) + 1):
        await _write(admin_bus.js, events[n - 1 : n])
        # No waiting: the answer includes every event stored before the request.
        shown, listed = await asyncio.gather(
            gateway.get(f"/runs/{run_id}"), gateway.get("/runs?researcher=follower&limit=1")
        )
        expected = _jsonable(fold_run(run_id, [s.event for s in events[:n]]))
        assert shown.json() == expected
        assert listed.json()["runs"] == [expected]
    # Many requests at once, right after a write, are all answered with it.
    more = build_run(researcher="follower")
    await _write(admin_bus.js, more[:3])
    answers = await asyncio.gather(
        *(gateway.get(f"/runs/{more[0].event.run_id}") for _ in range(20))
    )
    assert {a.json()["status"] for a in answers} == {"built"}


async def test_the_listing_is_newest_first_with_limit_and_researcher(gateway, admin_bus):
    researcher, other = f"res{uuid.uuid4().hex[:8]}", f"res{uuid.uuid4().hex[:8]}"
    base = datetime.now(UTC) - timedelta(days=3)
    mine = [build_run(researcher=researcher, start=base + timedelta(hours=h)) for h in range(6)]
    theirs = [build_run(researcher=other, start=base + timedelta(hours=h, minutes=30))
              for h in range(3)]  # fmt: skip
    shuffled = mine + theirs
    random.Random(4).shuffle(shuffled)
    for events in shuffled:
        await _write(admin_bus.js, events)
    newest = [run[0].event.run_id for run in reversed(mine)]

    async def listing(**params) -> list[str]:
        response = await gateway.get("/runs", params=params)
        assert response.status_code == 200, response.text
        return [r["run_id"] for r in response.json()["runs"]]

    assert await listing(researcher=researcher) == newest
    assert await listing(researcher=researcher, limit=2) == newest[:2]
    assert await listing(researcher=researcher, limit=0) == newest[:1]
    assert await listing(researcher=other) == [run[0].event.run_id for run in reversed(theirs)]
    assert await listing(researcher="nobody-at-all") == []
    everyone = await listing(limit=1000)
    assert [r for r in everyone if r in newest] == newest
    # A run pushed by a forge account is listed under the account until it is verified, then
    # under the researcher it maps to.
    mapped = build_run(researcher=f"{researcher}x", pusher=f"acct-{researcher}")
    run_id = mapped[0].event.run_id
    await _write(admin_bus.js, mapped[:1])
    assert await listing(researcher=f"acct-{researcher}") == [run_id]
    await _write(admin_bus.js, mapped[1:])
    assert await listing(researcher=f"acct-{researcher}") == []
    assert await listing(researcher=f"{researcher}x") == [run_id]


async def test_a_gateway_still_reading_the_log_answers_a_run_from_the_log(
    nats_server, admin_bus, tmp_path
):
    events = build_run(researcher="early")
    await _write(admin_bus.js, events)
    run_id = events[0].event.run_id
    bus = await nats_server.bus("gateway")
    try:
        async with _client(bus, tmp_path) as client:
            assert not client.projection.loaded
            shown = await client.get(f"/runs/{run_id}")
            assert shown.status_code == 200
            assert shown.json() == _jsonable(fold_run(run_id, [s.event for s in events]))
        # A listing waits for the first read; past its wait it says so, with a reason.
        projection = RunProjection(bus)
        with pytest.raises(ProjectionLoading, match="still reading the log"):
            await projection.listing(10, wait_s=0)
        await projection.close()
    finally:
        await bus.close()


async def test_a_run_a_lagging_replica_has_not_got_yet_is_not_404(gateway, admin_bus, monkeypatch):
    # On a JetStream cluster a follower may answer the direct get before it has the newest
    # events. Here the first read after the write answers as such a follower would: nothing.
    events = build_run(researcher="lagging")
    run_id = events[0].event.run_id
    await _write(admin_bus.js, events[:1])
    real_scan, behind = projection_module.scan, [True]

    async def lagging_scan(*args, **kwargs):
        if behind.pop() if behind else False:
            return
        async for chunk in real_scan(*args, **kwargs):
            yield chunk

    monkeypatch.setattr(projection_module, "scan", lagging_scan)
    shown = await gateway.get(f"/runs/{run_id}")
    assert not behind, "the lagging read was not taken"
    assert shown.status_code == 200, shown.text
    assert shown.json()["status"] == "received"
    # A run that does not exist is still 404, once the leader's last sequence is reached.
    assert (await gateway.get("/runs/r0000000000000000000")).status_code == 404


async def test_the_served_gateway_folds_new_events_without_being_asked(
    nats_server, admin_bus, tmp_path
):
    bus = await nats_server.bus("gateway")
    projection = RunProjection(bus)
    follower = asyncio.create_task(projection.follow(every_s=0.05))
    try:
        events = build_run(researcher="quiet")
        seq = await _write(admin_bus.js, events)

        async def folded() -> bool:
            return projection.seq >= seq

        await wait_until(folded, timeout=10)
        assert len(projection) >= 1
    finally:
        follower.cancel()
        await projection.close()
        await bus.close()


async def test_the_view_catches_up_after_a_gateway_and_a_nats_restart(tmp_path):
    port = free_port()
    conf = tmp_path / "nats.conf"
    passwords = write_nats_config(conf, port=port, store_dir=tmp_path / "js")
    server = start_nats(conf, port, passwords)

    async def bus_of(identity: str) -> EventBus:
        config = NatsConfig(
            url=server.url, user=identity, password=passwords[identity], connect_timeout_s=1
        )
        return EventBus(await connect(config, identity))

    try:
        admin = await bus_of(BOOTSTRAP_USER)
        await ensure_stream(admin.js)
        await ensure_log_stream(admin.js)
        runs = [build_run(researcher="restart") for _ in range(4)]
        await _write(admin.js, runs[0])
        await _write(admin.js, runs[1][:3])
        gateway_bus = await bus_of("gateway")
        async with _client(gateway_bus, tmp_path) as client:
            assert len((await client.get("/runs")).json()["runs"]) == 2
        await gateway_bus.close()
        # Written while no gateway runs; a new gateway (nothing kept) reads them all.
        await _write(admin.js, runs[1][3:])
        await _write(admin.js, runs[2])
        gateway_bus = await bus_of("gateway")
        async with _client(gateway_bus, tmp_path) as client:
            assert (await client.get("/runs")).json()["runs"] == _newest_first(
                await _log_views(admin)
            )
            # NATS stops and comes back on the same store; the gateway reconnects on its own
            # and its view goes on from the sequence it had reached.
            server.stop()
            server = start_nats(conf, port, passwords)
            await wait_until(_connected(admin, gateway_bus), timeout=20)
            await wait_until(_stored(admin, runs[3][:1]), timeout=20)
            await _write(admin.js, runs[3][1:])
            shown = await client.get(f"/runs/{runs[3][0].event.run_id}")
            assert shown.status_code == 200 and shown.json()["status"] == "published"
            assert (await client.get("/runs")).json()["runs"] == _newest_first(
                await _log_views(admin)
            )
        await gateway_bus.close()
        await admin.close()
    finally:
        server.stop()


def _stored(bus: EventBus, events: list[Stored]):
    """A check that stores `events` once JetStream takes writes again."""

    async def check() -> bool:
        try:
            await _write(bus.js, events)
        except Exception:
            return False
        return True

    return check


def _connected(*buses: EventBus):
    async def check() -> bool:
        return all(bus.nc.is_connected for bus in buses)

    return check
