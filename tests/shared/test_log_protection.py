"""No service identity can remove or rewrite the log, its checkpoints or the record of pushes
received; the deny flags hold.

Runs against the suite's shared NATS server, whose users come from IDENTITIES (the checkpointer
and the auditor included), and its SECD and SECD_CHECKPOINTS streams made by the bootstrap.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import nats.errors
import nats.js.errors
import pytest

from secd_shared.identities import IDENTITIES
from secd_shared.integrity import CHECKPOINT_STREAM, checkpoint_subject
from secd_shared.pushes import PUSH_STREAM, PushRegister, push_subject

pytestmark = pytest.mark.timeout(120)

_UPDATE = {"subjects": ["secd.run.>"], "deny_delete": False, "deny_purge": False}


def _forbidden(stream: str) -> dict[str, bytes]:
    update = dict(_UPDATE, name=stream)
    if stream == CHECKPOINT_STREAM:
        update["subjects"] = ["secd.checkpoint.*"]
    if stream == PUSH_STREAM:
        update["subjects"] = ["$KV.SECD_PUSHES.>"]
    return {
        f"$JS.API.STREAM.DELETE.{stream}": b"",
        f"$JS.API.STREAM.PURGE.{stream}": b"",
        f"$JS.API.STREAM.UPDATE.{stream}": json.dumps(update).encode(),
        f"$JS.API.STREAM.MSG.DELETE.{stream}": b'{"seq":1}',
        f"$JS.API.STREAM.SNAPSHOT.{stream}": b"{}",
    }


@pytest.mark.parametrize("identity", sorted(IDENTITIES))
async def test_no_identity_can_remove_or_rewrite_the_log_or_its_checkpoints(
    nats_server, admin_bus, identity, caplog
):
    requests = {
        **_forbidden("SECD"),
        **_forbidden(CHECKPOINT_STREAM),
        **_forbidden(PUSH_STREAM),
        "$JS.API.STREAM.CREATE.SECD_SHADOW": b'{"name":"SECD_SHADOW","subjects":["secd.>"]}',
        "$JS.API.STREAM.RESTORE.SECD": b"{}",
        # Checkpoints of another stream, even by the checkpointer.
        checkpoint_subject("SECD_SHADOW"): b"{}",
    }
    if identity != "checkpointer":
        requests[checkpoint_subject("SECD")] = b"{}"
    bus = await nats_server.bus(identity)
    try:
        results = await asyncio.gather(
            *(bus.nc.request(subject, body, timeout=0.5) for subject, body in requests.items()),
            return_exceptions=True,
        )
    finally:
        await bus.close()
    # The server drops each request (permissions), so each times out...
    refused = [r for r in results if isinstance(r, nats.errors.TimeoutError)]
    assert len(refused) == len(requests), [r for r in results if r not in refused]
    # ...and the real cause reached the connection's error callback, once per request.
    violations = [
        r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage()
    ]
    assert len(violations) == len(requests)
    for stream in ("SECD", CHECKPOINT_STREAM, PUSH_STREAM):
        info = await admin_bus.js.stream_info(stream)
        assert info.config.deny_delete and info.config.deny_purge


@pytest.mark.parametrize("identity", sorted(set(IDENTITIES) - {"gateway"}))
async def test_only_the_gateway_records_pushes(nats_server, admin_bus, identity, caplog):
    key = secrets.token_hex(32)
    bus = await nats_server.bus(identity)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await bus.nc.request(push_subject(key), b"r00000000000000000bb", timeout=0.5)
        with pytest.raises(nats.errors.TimeoutError):
            await bus.nc.request(f"$JS.API.DIRECT.GET.{PUSH_STREAM}", b'{"seq": 1}', timeout=0.5)
    finally:
        await bus.close()
    assert sum("permissions violation" in r.getMessage() for r in caplog.records) == 2
    assert await admin_bus.last(push_subject(key), stream=PUSH_STREAM) is None


async def test_the_gateway_writes_a_push_record_once_and_never_changes_it(
    nats_server, admin_bus, caplog
):
    key = secrets.token_hex(32)
    bus = await nats_server.bus("gateway")
    try:
        register = PushRegister(bus)
        assert await register.claim(key, "r00000000000000000c1") == "r00000000000000000c1"
        # A second claim gets the first run id; an overwrite or a delete marker is refused.
        assert await register.claim(key, "r00000000000000000c2") == "r00000000000000000c1"
        for headers in (
            {},
            {"KV-Operation": "DEL"},
            {"KV-Operation": "PURGE", "Nats-Rollup": "sub"},
        ):
            with pytest.raises(nats.js.errors.APIError):
                await bus.js.publish(push_subject(key), b"r00000000000000000c3", headers=headers)
        # The bucket gives the gateway one record by its key, not a way to list or watch it.
        forbidden = {
            f"$JS.API.STREAM.INFO.{PUSH_STREAM}": b"",
            f"$JS.API.CONSUMER.CREATE.{PUSH_STREAM}": b"{}",
            f"$JS.API.STREAM.MSG.GET.{PUSH_STREAM}": b'{"seq": 1}',
        }
        for subject, body in forbidden.items():
            with pytest.raises(nats.errors.TimeoutError):
                await bus.nc.request(subject, body, timeout=0.5)
    finally:
        await bus.close()
    assert sum("permissions violation" in r.getMessage() for r in caplog.records) == len(forbidden)
    assert await admin_bus.last(push_subject(key), stream=PUSH_STREAM) == b"r00000000000000000c1"


@pytest.mark.parametrize("stream", ["SECD", CHECKPOINT_STREAM, PUSH_STREAM])
async def test_the_streams_are_append_only_even_for_the_admin(audit_admin, stream):
    # On this module's own server, so that writing a message here disturbs no other test.
    js = audit_admin.jetstream()
    info = await js.stream_info(stream)
    config = info.config
    assert config.deny_delete and config.deny_purge and not config.allow_rollup_hdrs
    assert str(getattr(config.retention, "value", config.retention)) == "limits"
    assert str(getattr(config.storage, "value", config.storage)) == "file"
    assert config.max_age == 0 and config.max_msgs == -1 and config.max_bytes == -1
    subject = {
        "SECD": "secd.run.rprotect.push_received",
        CHECKPOINT_STREAM: "secd.checkpoint.SECD",
        PUSH_STREAM: push_subject("0" * 64),
    }[stream]
    ack = await js.publish(subject, b"{}")
    with pytest.raises(nats.js.errors.Error):
        await js.purge_stream(stream)
    with pytest.raises(nats.js.errors.Error):
        await js.delete_msg(stream, ack.seq)
    assert (await js.get_msg(stream, ack.seq)).data == b"{}"
    # Nor can the admin reconfigure the flags away: the server refuses to cancel them.
    config.deny_delete = config.deny_purge = False
    with pytest.raises(nats.js.errors.Error, match="can not cancel deny"):
        await js.update_stream(config)


async def test_the_checkpointer_writes_no_event(nats_server, admin_bus, caplog):
    bus = await nats_server.bus("checkpointer")
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await bus.nc.request("secd.run.rx.push_received", b"{}", timeout=0.5)
    finally:
        await bus.close()
    assert any("permissions violation" in r.getMessage() for r in caplog.records)
