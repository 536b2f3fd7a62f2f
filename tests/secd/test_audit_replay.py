"""`secd audit replay` on a real NATS server: filters, formats, the fast reader, bad input."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from secd.audit import AuditError, ReplayFilter, parse_time, replay
from secd.cli import main
from secd_shared.bus import EventBus
from secd_shared.logscan import scan
from tests.auditlog import add_transformed_stream, connect_as
from tests.auditruns import build_run, write_runs

pytestmark = pytest.mark.timeout(120)

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
async def runs(audit_admin):
    """Five runs three days apart, by alice, bob and carol, in two projects."""
    runs = [
        build_run(researcher="alice", project="alice/a", start=NOW - timedelta(days=4)),
        build_run(researcher="bob", project="bob/b", start=NOW - timedelta(days=3)),
        build_run(researcher="alice", project="alice/a", start=NOW - timedelta(days=2)),
        build_run(researcher="carol", project="alice/a", rejected=True, pusher="root"),
        build_run(researcher="bob", project="bob/b", start=NOW - timedelta(hours=1)),
    ]
    await write_runs(audit_admin.jetstream(), runs)
    return runs


async def _replay(nc, selection: ReplayFilter, fmt: str) -> str:
    out = io.StringIO()
    await replay(nc, "SECD", selection, fmt=fmt, out=out)
    return out.getvalue()


async def _json_lines(nc, selection: ReplayFilter) -> list[dict]:
    return [json.loads(line) for line in (await _replay(nc, selection, "json")).splitlines()]


async def test_every_filter_picks_exactly_its_events(audit_server, runs):
    auditor = await connect_as(audit_server, "auditor")
    everything = [s for run in runs for s in run]
    cases = [
        (ReplayFilter(), everything),
        (ReplayFilter(run=runs[1][0].event.run_id), runs[1]),
        (
            ReplayFilter(types=("credentials.issued",)),
            [s for s in everything if s.event.type == "credentials.issued"],
        ),
        (
            ReplayFilter(types=("run.rejected", "credentials.revoked")),
            [s for s in everything if s.event.type in ("run.rejected", "credentials.revoked")],
        ),
        (ReplayFilter(researcher="alice"), [s for s in everything if s.event.actor == "alice"]),
        (ReplayFilter(project="bob/b"), runs[1] + runs[4]),
        (
            ReplayFilter(project="alice/a", types=("results.published",)),
            [runs[0][-1], runs[2][-1], runs[3][-1]],
        ),
        (
            ReplayFilter(run=runs[3][0].event.run_id, types=("run.rejected",)),
            [runs[3][1]],
        ),
        (
            ReplayFilter(since=NOW - timedelta(days=3, hours=1), until=NOW - timedelta(days=1)),
            runs[1] + runs[2],
        ),
        (ReplayFilter(since=parse_time("2h")), runs[3] + runs[4]),
    ]
    try:
        for selection, expected in cases:
            lines = await _json_lines(auditor, selection)
            assert [line["id"] for line in lines] == [s.event.id for s in expected], selection
            seqs = [line["seq"] for line in lines]
            assert seqs == sorted(seqs)
    finally:
        await auditor.close()


async def test_json_lines_are_the_stored_events_with_their_sequence(audit_admin, runs):
    lines = await _json_lines(audit_admin, ReplayFilter(run=runs[0][0].event.run_id))
    for line, stored in zip(lines, runs[0], strict=True):
        seq = line.pop("seq")
        assert line == json.loads(stored.data)
        assert seq >= 1


async def test_csv_and_table_say_what_happened_without_secrets(audit_admin, runs):
    run = runs[0]
    selection = ReplayFilter(run=run[0].event.run_id)
    rows = list(csv.DictReader(io.StringIO(await _replay(audit_admin, selection, "csv"))))
    assert [r["type"] for r in rows] == [s.event.type for s in run]
    issued = rows[3]
    assert issued["actor"] == "alice" and issued["project"] == "alice/a"
    assert (
        issued["summary"] == f"account secd_{run[0].event.run_id} on sensitive: patients, refused 1"
    )
    assert issued["causation_id"] == run[2].event.id
    assert issued["time"] == (NOW - timedelta(days=4, seconds=-3)).isoformat(
        timespec="milliseconds"
    )
    table = await _replay(audit_admin, selection, "table")
    assert table.splitlines()[0].split() == ["SEQ", "TIME", "RUN", "TYPE", "BY", "ACTOR", "WHAT"]
    assert "credentials.issued" in table and "exit 0 after 1.50 s" in table
    sealed = run[3].event.payload.sealed_password
    for text in (table, json.dumps(rows)):
        assert sealed not in text


async def test_a_message_that_is_not_an_event_is_shown_not_dropped(audit_admin):
    js = audit_admin.jetstream()
    await add_transformed_stream(js, "JUNK", "junk.")
    run = build_run()
    await write_runs(js, [run], prefix="junk.")
    await js.publish("junk.secd.run.rbroken.push_received", b"\x00 not json")
    out = io.StringIO()
    count, invalid = await replay(audit_admin, "JUNK", ReplayFilter(), fmt="csv", out=out)
    assert (count, invalid) == (len(run) + 1, 1)
    last = next(csv.reader([out.getvalue().splitlines()[-1]]))
    assert last[3] == "secd.run.rbroken.push_received"
    assert last[-1].startswith("not a secd event: not JSON")
    out = io.StringIO()
    assert (await replay(audit_admin, "JUNK", ReplayFilter(), fmt="json", out=out))[1] == 1
    assert (
        json.loads(out.getvalue().splitlines()[-1])["subject"] == "secd.run.rbroken.push_received"
    )


async def test_the_fast_reader_reads_what_the_bus_reads(audit_server, audit_admin, runs):
    bus = EventBus(audit_admin, "SECD")
    expected = [(s.seq, s.subject, s.data) async for s in bus.read("secd.run.>")]
    for fast in (True, False):
        for batch in (3, 10_000):
            got = [
                (r.seq, r.subject, r.data)
                async for chunk in scan(audit_admin, "SECD", batch=batch, fast=fast)
                for r in chunk
            ]
            assert got == expected, (fast, batch)
    middle = expected[len(expected) // 2][0]
    part = [
        r.seq
        async for chunk in scan(audit_admin, "SECD", start_seq=middle, stop_seq=middle + 2)
        for r in chunk
    ]
    assert part == [middle, middle + 1, middle + 2]
    # The auditor's rights are enough: direct get only.
    auditor = await connect_as(audit_server, "auditor")
    try:
        got = [r.seq async for chunk in scan(auditor, "SECD") for r in chunk]
    finally:
        await auditor.close()
    assert got == [seq for seq, _, _ in expected]


def test_bad_filters_are_refused_with_what_to_do():
    with pytest.raises(AuditError, match="is not a run id"):
        ReplayFilter(run="r1.>")
    with pytest.raises(AuditError, match=r"'push\.recieved' is not an event type; use one of"):
        ReplayFilter(types=("push.recieved",))
    with pytest.raises(AuditError, match="--since is after --until"):
        ReplayFilter(since=NOW, until=NOW - timedelta(hours=1))
    with pytest.raises(AuditError, match="use ISO"):
        parse_time("yesterday")
    assert parse_time("2026-11-26T09:00") == datetime(2026, 11, 26, 9, tzinfo=UTC)
    assert parse_time("90m", now=NOW) == NOW - timedelta(minutes=90)
    assert parse_time("1w", now=NOW) == NOW - timedelta(days=7)


def test_replay_from_the_command_line(state_dir, runs, capsys):
    base = ["--state-dir", str(state_dir), "audit", "replay"]
    run_id = runs[1][0].event.run_id
    assert main([*base, "--run", run_id, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["type"] for r in rows] == [s.event.type for s in runs[1]]
    assert main([*base, "--researcher", "bob", "--type", "run.finished", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["run_id"] for x in lines] == [runs[1][0].event.run_id, runs[4][0].event.run_id]
    assert main([*base, "--run", "rnothere"]) == 1
    assert "no events for run rnothere" in capsys.readouterr().err
    assert main([*base, "--type", "push.recieved"]) == 2
    assert "is not an event type" in capsys.readouterr().err
    assert main(["--state-dir", str(state_dir / "nope"), "audit", "replay"]) == 2
    assert "no secd state in" in capsys.readouterr().err


async def test_headers_stored_by_a_publisher_cannot_pose_as_the_servers(audit_admin):
    js = audit_admin.jetstream()
    await add_transformed_stream(js, "SPOOF", "spoof.")
    run = build_run()
    fake = {"Nats-Subject": "secd.run.rfake.push_received", "Nats-Sequence": "999"}
    for stored in run:
        await js.publish("spoof." + stored.subject, stored.data, headers=fake)
    for fast in (True, False):
        got = [
            (r.seq, r.subject)
            async for chunk in scan(audit_admin, "SPOOF", fast=fast)
            for r in chunk
        ]
        assert got == [(i + 1, s.subject) for i, s in enumerate(run)], fast
