"""No service identity can remove or rewrite the log or its checkpoints; the deny flags hold.

Runs against the suite's shared NATS server, whose users come from IDENTITIES (the checkpointer
and the auditor included), and its SECD and SECD_CHECKPOINTS streams made by the bootstrap.
"""

from __future__ import annotations

import asyncio
import json

import nats.errors
import nats.js.errors
import pytest

from secd_shared.identities import IDENTITIES
from secd_shared.integrity import CHECKPOINT_STREAM, checkpoint_subject

pytestmark = pytest.mark.timeout(120)

_UPDATE = {"subjects": ["secd.run.>"], "deny_delete": False, "deny_purge": False}


def _forbidden(stream: str) -> dict[str, bytes]:
    update = dict(_UPDATE, name=stream)
    if stream == CHECKPOINT_STREAM:
        update["subjects"] = ["secd.checkpoint.*"]
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
    for stream in ("SECD", CHECKPOINT_STREAM):
        info = await admin_bus.js.stream_info(stream)
        assert info.config.deny_delete and info.config.deny_purge


@pytest.mark.parametrize("stream", ["SECD", CHECKPOINT_STREAM])
async def test_both_streams_are_append_only_even_for_the_admin(audit_admin, stream):
    # On this module's own server, so that writing a message here disturbs no other test.
    js = audit_admin.jetstream()
    info = await js.stream_info(stream)
    config = info.config
    assert config.deny_delete and config.deny_purge and not config.allow_rollup_hdrs
    assert str(getattr(config.retention, "value", config.retention)) == "limits"
    assert str(getattr(config.storage, "value", config.storage)) == "file"
    assert config.max_age == 0 and config.max_msgs == -1 and config.max_bytes == -1
    subject = "secd.run.rprotect.push_received" if stream == "SECD" else "secd.checkpoint.SECD"
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
