"""The event log on a real NATS server: zero trust between services, publish-once, read-back."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest

from secd_shared.events import (
    CredentialsRevoked,
    Producer,
    PushVerified,
    new_event,
    new_run_id,
    subject_for,
)
from secd_shared.identities import IDENTITIES


def _verified(run_id: str):
    return new_event(
        PushVerified(
            repository="alice/m", ref="refs/heads/main", head="a" * 40, commits=[],
            researcher="alice", keys=[],
        ),
        run_id=run_id, producer=Producer("verifier", "test"), actor="alice", project="alice/m",
    )  # fmt: skip


def _revoked(run_id: str):
    return new_event(
        CredentialsRevoked(account=f"secd_{run_id}", backend="postgres"),
        run_id=run_id, producer=Producer("verifier", "test"), actor="alice", project="alice/m",
    )  # fmt: skip


async def test_verifier_cannot_publish_a_credentials_event(nats_server, admin_bus):
    verifier = await nats_server.bus("verifier")
    run_id = new_run_id()
    try:
        # Its own event is accepted...
        await verifier.publish(_verified(run_id))
        # ...a credentials event is refused by the server (the client only sees a timeout).
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
            await verifier.publish(_revoked(run_id), timeout=1.0)
    finally:
        await verifier.close()
    types = [s.event.type for s in await admin_bus.read_run(run_id)]
    assert types == ["push.verified"]


@pytest.mark.parametrize("identity", sorted(IDENTITIES))
async def test_no_service_can_delete_purge_or_reconfigure_the_stream(
    nats_server, admin_bus, identity, caplog
):
    bus = await nats_server.bus(identity)
    # Raw JetStream API requests: the server drops them (permissions), so they time out.
    requests = {
        "$JS.API.STREAM.DELETE.SECD": b"",
        "$JS.API.STREAM.PURGE.SECD": b"",
        "$JS.API.STREAM.UPDATE.SECD": (
            b'{"name":"SECD","subjects":["secd.run.>"],"deny_purge":false}'
        ),
        "$JS.API.CONSUMER.DELETE.SECD.verifier": b"",
        "$JS.API.CONSUMER.CREATE.SECD": b'{"stream_name":"SECD","config":{}}',
    }
    try:
        for subject, body in requests.items():
            with pytest.raises(nats.errors.TimeoutError):
                await bus.nc.request(subject, body, timeout=0.3)
    finally:
        await bus.close()
    # ...and the real cause reached the connection's error callback, once per request.
    violations = [
        r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage()
    ]
    assert len(violations) == len(requests)
    info = await admin_bus.js.stream_info("SECD")
    assert info.config.deny_delete and info.config.deny_purge
    assert str(getattr(info.config.retention, "value", info.config.retention)) == "limits"
    assert info.config.duplicate_window >= 60


async def test_even_the_admin_cannot_purge(admin_bus):
    with pytest.raises(nats.js.errors.Error):
        await admin_bus.js.purge_stream("SECD")


async def test_an_event_is_stored_once_however_often_it_is_published(admin_bus):
    run_id = new_run_id()
    await admin_bus.publish(_verified(run_id))
    await admin_bus.publish(_verified(run_id))  # a new envelope: same run and type
    await asyncio.gather(*(admin_bus.publish(_verified(run_id)) for _ in range(5)))
    stored = await admin_bus.read_run(run_id)
    assert len(stored) == 1
    assert stored[0].subject == subject_for(run_id, "push.verified")
    assert stored[0].event.payload.researcher == "alice"


async def test_read_pages_through_more_than_one_batch(admin_bus):
    runs = [new_run_id() for _ in range(30)]
    for run_id in runs:
        await admin_bus.publish(_verified(run_id))
    seen = [s.event.run_id async for s in admin_bus.read("secd.run.*.push_verified", batch=7)]
    assert [r for r in seen if r in runs] == runs


async def test_a_message_id_given_by_the_caller_names_the_event(admin_bus):
    # Two runs' events under one caller-given id (a push's): the second is a duplicate.
    first, second = new_run_id(), new_run_id()
    await admin_bus.publish(_verified(first), msg_id=f"push.{first}")
    await admin_bus.publish(_verified(second), msg_id=f"push.{first}")
    assert len(await admin_bus.read_run(first)) == 1
    assert await admin_bus.read_run(second) == []
