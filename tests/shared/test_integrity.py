"""Integrity on a real NATS server: chains, signed checkpoints by the checkpointer identity, and
`verify` naming what was altered or removed in a copy of the log."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from nacl.signing import SigningKey

from secd.cli import main
from secd_shared.events import encode_event
from secd_shared.integrity import (
    CHECKPOINT_STREAM,
    GENESIS,
    Checkpoint,
    CheckpointError,
    LogVerifier,
    chain_step,
    checkpoint_subject,
    encode_checkpoint,
    key_id,
    make_checkpoint,
    read_checkpoints,
    sign_checkpoint,
    verify_log,
)
from secd_shared.logscan import Record, scan
from tests.auditlog import add_transformed_stream, connect_as
from tests.auditruns import build_run, write_runs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
async def log(audit_server, audit_admin, signing_key):
    """SECD holding six runs, checkpointed by the checkpointer identity after three and six."""
    _, key = signing_key
    runs = [build_run(researcher=r) for r in ("alice", "bob", "alice")]
    runs.insert(1, build_run(rejected=True))
    runs += [build_run(researcher="carol"), build_run(researcher="bob")]
    js = audit_admin.jetstream()
    checkpointer = await connect_as(audit_server, "checkpointer")
    try:
        await write_runs(js, runs[:3])
        first = await make_checkpoint(checkpointer, "SECD", key)
        await write_runs(js, runs[3:])
        second = await make_checkpoint(checkpointer, "SECD", key)
        again = await make_checkpoint(checkpointer, "SECD", key)
    finally:
        await checkpointer.close()
    seqs = {}
    async for chunk in scan(audit_admin, "SECD"):
        for record in chunk:
            seqs[record.subject] = record.seq
    return {"runs": runs, "checkpoints": [first, second], "again": again, "seqs": seqs}


@pytest.fixture
def keys(signing_key):
    _, key = signing_key
    return {key_id(key.verify_key): key.verify_key}


async def copy_log(nc, target: str, *, alter=None, remove=(), protected=True) -> None:
    """SECD copied message by message into `target`: same subjects, same sequence numbers."""
    prefix = f"{target.lower()}."
    js = nc.jetstream()
    await add_transformed_stream(js, target, prefix, protected=protected)
    async for chunk in scan(nc, "SECD"):
        for record in chunk:
            data = alter(record) if alter else record.data
            await js.publish(prefix + record.subject, data)
    for seq in remove:
        # Only an unprotected copy allows this: it is what editing the store's files does.
        await js.delete_msg(target, seq)


def _seq_of(log, run_index: int, event_type: str) -> int:
    run = log["runs"][run_index]
    stored = next(s for s in run if s.event.type == event_type)
    return log["seqs"][stored.subject]


async def test_the_checkpointer_signs_ranges_that_follow_each_other(log, keys):
    first, second = log["checkpoints"]
    total = sum(len(run) for run in log["runs"])
    assert (first.first_seq, second.first_seq, second.last_seq) == (1, first.last_seq + 1, total)
    assert first.last_seq == sum(len(run) for run in log["runs"][:3])
    assert log["again"] is None  # nothing new, nothing signed
    assert {first.key_id, second.key_id} == set(keys)


async def test_an_unaltered_log_verifies_clean(audit_server, log, keys):
    auditor = await connect_as(audit_server, "auditor")
    try:
        stored = await read_checkpoints(auditor, "SECD")
        report = await verify_log(auditor, "SECD", checkpoints=stored, keys=keys)
    finally:
        await auditor.close()
    assert stored == log["checkpoints"]
    assert report.clean, [f.describe() for f in report.findings]
    assert report.events == report.last_seq == log["checkpoints"][1].last_seq
    assert (report.runs, report.checkpoints) == (len(log["runs"]), 2)


async def test_an_unaltered_copy_verifies_clean_against_the_originals_checkpoints(
    audit_admin, log, keys
):
    await copy_log(audit_admin, "COPY_CLEAN")
    report = await verify_log(
        audit_admin, "COPY_CLEAN", checkpoints=log["checkpoints"], keys=keys, checkpoints_of="SECD"
    )
    assert report.clean, [f.describe() for f in report.findings]


async def test_an_event_altered_in_a_copy_is_named(audit_admin, log, keys):
    target = _seq_of(log, 2, "build.succeeded")

    def alter(record: Record) -> bytes:
        if record.seq != target:
            return record.data
        return record.data.replace(b'"reused":false', b'"reused":true')

    await copy_log(audit_admin, "COPY_ALTERED", alter=alter)
    report = await verify_log(
        audit_admin,
        "COPY_ALTERED",
        checkpoints=log["checkpoints"],
        keys=keys,
        checkpoints_of="SECD",
    )
    assert not report.clean
    first = report.first
    run_id = log["runs"][2][0].event.run_id
    assert (first.seq, first.kind, first.run_id) == (target, "altered", run_id)
    assert first.subject.endswith(".build_succeeded")
    assert f"seq {target + 1} (credentials.issued)" in first.problem
    # The checkpoint that covers it says so too, and names its range; the later one is intact.
    ranges = [f.problem for f in report.findings if f.kind == "checkpoint"]
    assert ranges == [
        f"seq 1..{log['checkpoints'][0].last_seq} no longer hash to the checkpoint of "
        f"{log['checkpoints'][0].time}: an event in that range was altered, removed or "
        "inserted since"
    ]


async def test_an_altered_event_nothing_reacted_to_is_caught_by_its_checkpoint(
    audit_admin, log, keys
):
    target = _seq_of(log, 4, "results.published")

    def alter(record: Record) -> bytes:
        return (
            record.data.replace(b"model.json", b"model.pkl!")
            if record.seq == target
            else record.data
        )

    await copy_log(audit_admin, "COPY_LEAF", alter=alter)
    report = await verify_log(
        audit_admin, "COPY_LEAF", checkpoints=log["checkpoints"], keys=keys, checkpoints_of="SECD"
    )
    second = log["checkpoints"][1]
    assert [(f.from_seq, f.seq, f.kind) for f in report.findings] == [
        (second.first_seq, second.last_seq, "checkpoint")
    ]
    assert f"seq {second.first_seq}..{second.last_seq} no longer hash" in report.first.problem
    # Without checkpoints the chains alone cannot see it: that is what checkpoints are for.
    unguarded = await verify_log(audit_admin, "COPY_LEAF", keys=keys)
    assert unguarded.clean


async def test_a_removed_event_is_named(audit_admin, log, keys):
    target = _seq_of(log, 3, "credentials.issued")
    await copy_log(audit_admin, "COPY_REMOVED", remove=[target], protected=False)
    report = await verify_log(
        audit_admin,
        "COPY_REMOVED",
        checkpoints=log["checkpoints"],
        keys=keys,
        checkpoints_of="SECD",
    )
    # First the copy's own settings (it had to allow deletes), then the removed event.
    assert [f.kind for f in report.findings[:2]] == ["stream", "stream"]
    first = report.findings[2]
    assert (first.seq, first.kind) == (target, "missing")
    assert f"seq {target} missing: a gap" in first.problem
    kinds = {(f.kind, f.seq) for f in report.findings}
    # Its reactions point at an event that is not there...
    assert ("missing", target + 1) in kinds and ("missing", target + 2) in kinds
    # ...and its range no longer matches its checkpoint; the copy also lacks the deny flags.
    assert ("checkpoint", log["checkpoints"][1].last_seq) in kinds


async def test_a_forged_checkpoint_is_reported(log, keys):
    first, second = log["checkpoints"]
    forged = msgspec.structs.replace(second, running_hash="00" * 32)
    stranger = sign_checkpoint(
        SigningKey.generate(),
        stream="SECD",
        first_seq=second.first_seq,
        last_seq=second.last_seq,
        running_hash=bytes.fromhex(second.running_hash),
    )
    for checkpoint, says in (
        (forged, "signature does not verify"),
        (stranger, "not a known key"),
    ):
        verifier = LogVerifier("SECD", [first, checkpoint], keys)
        report = await _verify_records(verifier, log)
        assert [(f.seq, f.kind) for f in report.findings] == [(second.last_seq, "signature")]
        assert says in report.first.problem
        assert report.checkpoints == 1 and report.checkpointed_to == first.last_seq


async def _verify_records(verifier: LogVerifier, log):
    # The records of the original log, in order, without NATS: the verifier is plain code.
    records = []
    for run in log["runs"]:
        for stored in run:
            records.append(Record(log["seqs"][stored.subject], stored.subject, stored.data))
    for record in sorted(records, key=lambda r: r.seq):
        verifier.feed(record)
    return verifier.finish()


async def test_a_log_shorter_than_its_checkpoint_is_reported(log, keys):
    first, second = log["checkpoints"]
    verifier = LogVerifier("SECD", [first, second], keys)
    records = sorted(
        (Record(log["seqs"][s.subject], s.subject, s.data) for run in log["runs"] for s in run),
        key=lambda r: r.seq,
    )
    for record in records[:-2]:
        verifier.feed(record)
    report = verifier.finish()
    assert [(f.seq, f.kind) for f in report.findings] == [(second.last_seq - 1, "missing")]
    assert f"covers up to seq {second.last_seq}" in report.first.problem


def test_the_chain_catches_what_does_not_follow():
    alice, bob = build_run(), build_run(researcher="bob")
    records = [Record(i + 1, s.subject, s.data) for i, s in enumerate(alice)]
    # An event claiming a cause from another run, a re-used id, no cause, garbage bytes, and an
    # event stored under the wrong subject.
    foreign = msgspec.structs.replace(
        alice[2].event,
        id="f" * 24,
        causation_id=bob[1].event.id,
        causation_hash="0" * 64,
    )
    stray = msgspec.structs.replace(alice[1].event, causation_id=None, causation_hash=None)
    extra = [
        Record(100, bob[0].subject, bob[0].data),
        Record(101, bob[1].subject, bob[1].data),
        Record(102, alice[2].subject, encode_event(foreign)),
        Record(103, alice[1].subject, encode_event(stray)),
        Record(104, alice[1].subject, b"{not json"),
        Record(105, bob[2].subject.replace("build_succeeded", "run_started"), bob[2].data),
    ]
    verifier = LogVerifier("SECD")
    for record in [*records, *extra]:
        verifier.feed(record)
    report = verifier.finish()
    found = [(f.seq, f.kind) for f in report.findings]
    assert found == [
        (len(records) + 1, "missing"),  # the gap before seq 100
        (102, "chain"),
        (103, "chain"),
        (103, "chain"),
        (104, "invalid"),
        (105, "altered"),
    ]
    problems = " | ".join(f.problem for f in report.findings)
    assert "of another run" in problems
    assert f"event id {alice[1].event.id} was already used by seq 2" in problems
    assert "names no event it reacts to" in problems
    assert "stored on" in problems and "but says it is build.succeeded" in problems


def test_the_running_hash_depends_on_every_field_and_the_order():
    a = chain_step(chain_step(GENESIS, 1, "s.a", b"x"), 2, "s.b", b"y")
    assert a != chain_step(chain_step(GENESIS, 1, "s.a", b"x"), 2, "s.b", b"z")
    assert a != chain_step(chain_step(GENESIS, 1, "s.a", b"x"), 3, "s.b", b"y")
    assert a != chain_step(chain_step(GENESIS, 1, "s.a", b"x"), 2, "s.c", b"y")
    assert a != chain_step(chain_step(GENESIS, 2, "s.b", b"y"), 1, "s.a", b"x")


def test_verify_and_export_from_the_command_line(state_dir, log, tmp_path, capsys):
    assert main(["--state-dir", str(state_dir), "audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "2 checkpoint(s)" in out
    exported = tmp_path / "checkpoints.jsonl"
    assert (
        main(["--state-dir", str(state_dir), "audit", "checkpoints", "export", str(exported)]) == 0
    )
    lines = exported.read_bytes().splitlines()
    assert lines == [encode_checkpoint(c) for c in log["checkpoints"]]
    args = ["--state-dir", str(state_dir), "audit", "verify", "--checkpoints", str(exported)]
    assert main(args) == 0
    capsys.readouterr()
    # Someone edits the offline copy: the last checkpoint now claims less than it signed.
    forged = msgspec.json.decode(lines[1])
    forged["last_seq"] -= 1
    exported.write_bytes(lines[0] + b"\n" + msgspec.json.encode(forged) + b"\n")
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "NOT CLEAN" in out and "signature does not verify" in out
    assert main([*args, "--json"]) == 1
    assert '"clean": false' in capsys.readouterr().out


async def test_the_checkpointer_extends_only_its_own_checkpoints(audit_admin, signing_key):
    _, key = signing_key
    js = audit_admin.jetstream()
    await add_transformed_stream(js, "AUDX", "audx.")
    await write_runs(js, [build_run()], prefix="audx.")
    intruder = sign_checkpoint(
        SigningKey.generate(), stream="AUDX", first_seq=1, last_seq=3, running_hash=GENESIS
    )
    await js.publish(checkpoint_subject("AUDX"), encode_checkpoint(intruder))
    with pytest.raises(CheckpointError, match="cannot be extended: signed with key"):
        await make_checkpoint(audit_admin, "AUDX", key)


def test_a_checkpoint_signature_covers_every_field(signing_key):
    _, key = signing_key
    keys = {key_id(key.verify_key): key.verify_key}
    checkpoint = sign_checkpoint(key, stream="SECD", first_seq=1, last_seq=9, running_hash=GENESIS)
    from secd_shared.integrity import signature_problem

    assert signature_problem(checkpoint, keys) is None
    for field, value in (
        ("stream", "OTHER"),
        ("first_seq", 2),
        ("last_seq", 10),
        ("running_hash", "11" * 32),
        ("time", datetime.now(UTC).isoformat()),
    ):
        changed = msgspec.structs.replace(checkpoint, **{field: value})
        assert "does not verify" in signature_problem(changed, keys), field
    assert CHECKPOINT_STREAM == "SECD_CHECKPOINTS"
    assert isinstance(checkpoint, Checkpoint)


def test_a_report_keeps_the_earliest_findings_and_counts_the_rest():
    from secd_shared.integrity import MAX_FINDINGS

    verifier = LogVerifier("SECD")
    total = 2 * MAX_FINDINGS + 500
    for seq in range(1, total + 1):
        verifier.feed(Record(seq, "secd.run.rx.push_received", b"junk"))
    report = verifier.finish()
    assert report.findings_total == total and len(report.findings) == MAX_FINDINGS
    assert [f.seq for f in report.findings] == list(range(1, MAX_FINDINGS + 1))
