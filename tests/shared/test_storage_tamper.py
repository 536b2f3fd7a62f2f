"""Someone with the server's files edits one event where JetStream keeps it, and restarts NATS:
`secd audit verify` names the event (the API's deny flags never saw it happen)."""

from __future__ import annotations

import shutil

import pytest
from nacl.signing import SigningKey

from secd_shared.identities import BOOTSTRAP_USER
from secd_shared.integrity import key_id, make_checkpoint, read_checkpoints, verify_log
from secd_shared.stream import ensure_stream
from tests.auditlog import connect_as, start_nats, stop_nats
from tests.auditruns import build_run, write_runs

pytestmark = pytest.mark.timeout(120)


async def test_an_event_edited_in_the_stores_files_is_named(tmp_path):
    original = tmp_path / "original"
    server = start_nats(original)
    key = SigningKey.generate()
    runs = [build_run(researcher=name) for name in ("alice", "bob", "carol")]
    try:
        nc = await connect_as(server, BOOTSTRAP_USER)
        await ensure_stream(nc.jetstream())
        await write_runs(nc.jetstream(), runs)
        await make_checkpoint(nc, "SECD", key)
        await nc.close()
    finally:
        stop_nats(server)

    # The copy of the storage gets the edit; the original stays as it was.
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    (block,) = copy.glob("js/jetstream/*/streams/SECD/msgs/*.blk")
    target = runs[1][3]  # bob's credentials.issued
    account = target.event.payload.account.encode()
    stored = block.read_bytes()
    assert stored.count(account) == 2  # in credentials.issued and credentials.revoked
    # Only the first occurrence: bob's account name in the issued event, same length.
    block.write_bytes(stored.replace(account, account[:-4] + b"beef", 1))

    keys = {key_id(key.verify_key): key.verify_key}
    for root, clean in ((original, True), (copy, False)):
        server = start_nats(root)
        try:
            nc = await connect_as(server, BOOTSTRAP_USER)
            checkpoints = await read_checkpoints(nc, "SECD")
            report = await verify_log(nc, "SECD", checkpoints=checkpoints, keys=keys)
            head = (await nc.jetstream().stream_info("SECD")).state.last_seq
            await nc.close()
        finally:
            stop_nats(server)
        assert report.clean is clean, [f.describe() for f in report.findings]
    seq = next(i for i, s in enumerate(s for run in runs for s in run) if s is target) + 1
    first = report.first
    # NATS finds its own record checksum broken and drops the record: a gap, named. (Had the
    # editor recomputed that checksum, the chain and the checkpoint would name it instead, as
    # the copy-stream tests in test_integrity show.)
    assert (first.seq, first.kind) == (seq, "missing"), first.describe()
    assert head == sum(len(run) for run in runs)
    assert any(f.kind == "checkpoint" for f in report.findings)
