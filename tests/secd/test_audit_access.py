"""`secd audit access`: who held which tables from when to when; accounts never revoked."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from secd.audit import access_rows, write_access
from secd.cli import main
from tests.auditruns import build_run, write_runs

pytestmark = pytest.mark.timeout(120)

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
async def runs(audit_admin):
    """Revoked (alice), never revoked with its lease over (bob), never revoked and still within
    its lease (carol), and a rejected push that never got an account."""
    runs = {
        "revoked": build_run(researcher="alice", tables=("patients", "visits"), start=NOW),
        "overdue": build_run(
            researcher="bob",
            project="bob/b",
            revoked=False,
            start=NOW - timedelta(days=1),
            expires_at=NOW - timedelta(hours=20),
        ),
        "open": build_run(researcher="carol", revoked=False, expires_at=NOW + timedelta(hours=2)),
        "rejected": build_run(researcher="dave", rejected=True),
    }
    await write_runs(audit_admin.jetstream(), list(runs.values()))
    return runs


def _event(run, event_type):
    return next(s.event for s in run if s.event.type == event_type)


async def test_each_account_with_its_tables_commits_and_time(audit_admin, runs):
    rows = {row.researcher: row for row in await access_rows(audit_admin, "SECD")}
    assert sorted(rows) == ["alice", "bob", "carol"]
    alice = rows["alice"]
    issued = _event(runs["revoked"], "credentials.issued")
    revoked = _event(runs["revoked"], "credentials.revoked")
    assert alice.run_id == issued.run_id and alice.project == "alice/model"
    assert alice.account == issued.payload.account and alice.database == "sensitive"
    assert alice.tables == ["patients", "visits"] and alice.refused == ["billing"]
    assert alice.commits == issued.payload.plan.commits
    assert (alice.issued_at, alice.revoked_at) == (issued.time, revoked.time)
    assert alice.revoked and not rows["bob"].revoked and not rows["carol"].revoked
    assert rows["bob"].lease_passed(NOW) and not rows["carol"].lease_passed(NOW)


async def test_filters(audit_admin, runs):
    async def who(**filters):
        return [r.researcher for r in await access_rows(audit_admin, "SECD", **filters)]

    assert await who(open_only=True) == ["bob", "carol"]
    assert await who(table="visits") == ["alice"]
    assert await who(project="bob/b") == ["bob"]
    assert await who(researcher="carol") == ["carol"]
    assert await who(run=runs["overdue"][0].event.run_id) == ["bob"]
    assert await who(run=runs["rejected"][0].event.run_id) == []
    # Held at any time in the last hour: alice (revoked seconds after NOW) and the open ones.
    assert await who(since=NOW - timedelta(hours=1)) == ["alice", "bob", "carol"]
    assert await who(until=NOW - timedelta(hours=12)) == ["bob"]
    assert await who(since=NOW + timedelta(minutes=1)) == ["bob", "carol"]


async def test_the_report_flags_accounts_never_revoked(audit_admin, runs):
    rows = await access_rows(audit_admin, "SECD")
    out = io.StringIO()
    write_access(rows, fmt="table", out=out, now=NOW)
    table = out.getvalue()
    bob = runs["overdue"][0].event.run_id
    lines = table.splitlines()
    bob_line = next(i for i, line in enumerate(lines) if line.startswith(bob))
    assert "NOT REVOKED" in lines[bob_line]
    assert (
        f"account secd_{bob} on sensitive was never revoked; its lease ENDED"
        in (lines[bob_line + 1])
    )
    carol = next(line for line in lines if "carol" in line and "was never" not in line)
    assert "NOT REVOKED" in carol
    assert "its lease runs until" in table
    assert lines[-1] == "3 account(s); 2 not revoked, 1 of them past their lease"

    out = io.StringIO()
    write_access(rows, fmt="csv", out=out, now=NOW)
    parsed = {r["researcher"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert parsed["alice"]["status"] == "revoked" and parsed["alice"]["tables"] == "patients;visits"
    assert parsed["bob"]["status"] == "NOT REVOKED" and parsed["bob"]["lease_passed"] == "True"
    assert parsed["bob"]["until"] == ""
    assert parsed["carol"]["lease_passed"] == "False"

    out = io.StringIO()
    write_access(rows, fmt="json", out=out, now=NOW)
    parsed = {r["researcher"]: r for r in map(json.loads, out.getvalue().splitlines())}
    assert parsed["alice"]["held_s"] == 3.0  # issued at +3 s, revoked at +6 s
    assert parsed["bob"]["until"] is None and parsed["bob"]["status"] == "NOT REVOKED"


def test_access_from_the_command_line(state_dir, runs, capsys):
    base = ["--state-dir", str(state_dir), "audit", "access"]
    assert main([*base, "--not-revoked", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["researcher"] for r in rows] == ["bob", "carol"]
    assert main([*base, "--researcher", "alice", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["status"] == "revoked"
    assert main([*base, "--since", "soon"]) == 2
    assert "is not a time" in capsys.readouterr().err
