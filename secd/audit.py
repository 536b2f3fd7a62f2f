"""`secd audit`: the security officer's view of the event log, read with the auditor identity.

- `replay`: the log, or the part of it a filter selects, as a table, JSON lines or CSV;
- `access`: who had a database account on which tables, from when to when, and which accounts
  were never revoked;
- `verify`: the per-run hash chains, the sequence, and the signed checkpoints;
- `checkpoints export`: the checkpoints as JSON lines, for keeping offline.

Every function here takes a NATS connection and a stream name, so the tests can point them at a
copy of the log; the `*_command` functions are what the `secd` command runs.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import nats.js.errors
from nats.aio.client import Client

from secd_shared.events import EVENT_TYPES, EventDecodeError, decode_event, type_token
from secd_shared.integrity import (
    Checkpoint,
    CheckpointError,
    VerifyReport,
    decode_checkpoint,
    encode_checkpoint,
    key_id,
    load_verify_key,
    read_checkpoints,
    verify_log,
)
from secd_shared.logscan import EventHeader, LogReadError, Record, decode_header, scan

__all__ = [
    "AccessRow",
    "AuditError",
    "ReplayFilter",
    "access_command",
    "access_rows",
    "connect_as",
    "export_checkpoints",
    "export_command",
    "open_log",
    "parse_time",
    "replay",
    "replay_command",
    "replay_records",
    "summarize",
    "verify_command",
    "wait_for_commit",
    "write_access",
    "write_report",
]

FORMATS = ("table", "json", "csv")
# Event times are the producers' clocks, the stream's are the server's: seek this much earlier.
CLOCK_SLACK = timedelta(minutes=5)
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class AuditError(Exception):
    """Bad input or an unreachable log; the message says what to do, in one line."""


async def open_log(state_dir: Path):
    """An EventBus connected as the read-only auditor identity of the stack in `state_dir`."""
    return await connect_as(state_dir, "auditor")


async def connect_as(state_dir: Path, identity: str):
    """An EventBus connected as `identity` (a read-only one: auditor, reviewer) of the stack
    in `state_dir`, its password read from the state folder's secrets."""
    from secd_shared.bus import EventBus, connect
    from secd_shared.config import NatsConfig
    from secd_shared.secret import Secret

    try:
        config = tomllib.loads((state_dir / "secd.toml").read_text())
        secret = json.loads((state_dir / "secrets" / "stack.json").read_text())
        password = secret["nats"][identity]
    except (OSError, KeyError, ValueError) as exc:
        raise AuditError(
            f"no secd state in {state_dir} ({type(exc).__name__}: {exc}); pass --state-dir "
            "with the folder `secd up` uses, as an account that can read its secrets"
        ) from None
    url = config["nats"]["url"]
    nats = NatsConfig(url=url, user=identity, password=Secret(password))
    try:
        # connect() retries for ever (right for a service); a command should say why it waits.
        nc = await asyncio.wait_for(connect(nats, identity), 10)
    except TimeoutError:
        raise AuditError(f"NATS at {url} is not reachable; is `secd up` running?") from None
    return EventBus(nc, config["nats"].get("stream", "SECD"))


async def wait_for_commit(
    bus, head: str, event_type: str, *, timeout: float = 120.0, interval: float = 0.05
) -> list:
    """The stored events of the run that pushing commit `head` started, once the run has an
    event of `event_type`; TimeoutError after `timeout` seconds."""
    from secd_shared.events import subject_for

    deadline = time.monotonic() + timeout
    cursor, run_id = 1, None
    while True:
        if run_id is None:
            # Only the pushes not looked at yet; the first one of this commit names the run.
            async for stored in bus.read(subject_for("*", "push.received"), start_seq=cursor):
                cursor = stored.seq + 1
                if run_id is None and stored.event.payload.after == head:
                    run_id = stored.event.run_id
        if run_id is not None and await bus.last(subject_for(run_id, event_type)) is not None:
            return await bus.read_run(run_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {event_type} for commit {head[:7]} within {timeout:g} s")
        await asyncio.sleep(interval)


def summarize(event) -> str:
    """One line saying what an event says, without anything secret."""
    p = event.payload
    match event.type:
        case "push.received":
            return f"{p.pusher} pushed {p.after[:7]} to {p.ref}"
        case "push.verified":
            return f"{len(p.commits)} commit(s) verified for {p.researcher}"
        case "run.rejected" | "run.failed":
            return p.reason
        case "build.succeeded":
            return f"environment {p.plan.environment[:12]} ({'reused' if p.reused else 'built'})"
        case "credentials.issued":
            refused = f", refused {len(p.refused)}" if p.refused else ""
            return f"account {p.account} on {p.database}: {', '.join(p.granted)}{refused}"
        case "run.started":
            return f"sandbox {p.sandbox}"
        case "run.finished":
            return f"exit {p.exit_code} after {p.duration_s:.2f} s"
        case "credentials.revoked":
            return f"account {p.account} revoked"
        case "results.published":
            return f"{p.outcome}: branch {p.branch}"
        case "results.extended":
            return f"{len(p.files)} file(s) released by {', '.join(p.by)} added to {p.branch}"
    return getattr(p, "reason", "")


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO time (UTC unless it says otherwise) or an age like 90s, 15m, 2h, 7d, 1w."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - timedelta(seconds=float(relative[1]) * _UNITS[relative[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditError(
            f"{text!r} is not a time; use ISO (2026-11-26T09:00, UTC unless it says +hh:mm) "
            "or an age like 30m, 2h, 7d"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ReplayFilter:
    """Which events to replay: every given condition must hold."""

    run: str | None = None
    researcher: str | None = None
    project: str | None = None
    types: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.run is not None and not _RUN_ID.fullmatch(self.run):
            raise AuditError(f"--run {self.run!r} is not a run id (letters and digits, e.g. r1a2…)")
        for event_type in self.types:
            if event_type not in EVENT_TYPES:
                raise AuditError(
                    f"--type {event_type!r} is not an event type; use one of "
                    + ", ".join(EVENT_TYPES)
                )
        if self.since and self.until and self.since > self.until:
            raise AuditError("--since is after --until; swap them")

    def subjects(self) -> str:
        """The narrowest subject filter the server can apply for this filter."""
        run = self.run or "*"
        last = type_token(self.types[0]) if len(self.types) == 1 else ">"
        return "secd.run.>" if run == "*" and last == ">" else f"secd.run.{run}.{last}"

    @property
    def needs_header(self) -> bool:
        """Whether the envelope must be decoded to decide (the subject alone is not enough)."""
        return bool(self.researcher or self.project or self.since or self.until)

    def wants(self, header: EventHeader) -> bool:
        """Whether an event's envelope passes the researcher, project and time conditions."""
        return (
            (self.researcher is None or header.actor == self.researcher)
            and (self.project is None or header.project == self.project)
            and (self.since is None or header.time >= self.since)
            and (self.until is None or header.time <= self.until)
        )


async def replay_records(
    nc: Client, stream: str, selection: ReplayFilter
) -> AsyncIterator[tuple[Record, EventHeader | None]]:
    """The stored events a filter selects, in log order, with their envelope when decoded.

    The run and a single type go to the server as a subject filter; several types are told
    apart by the subject's last token; only researcher, project and time need the envelope,
    and the payload is never decoded here. An envelope that does not decode is yielded with
    None, so the caller can say so rather than lose it.
    """
    tokens = {type_token(t) for t in selection.types} if len(selection.types) > 1 else None
    start_time = selection.since - CLOCK_SLACK if selection.since else None
    stop_after = selection.until + CLOCK_SLACK if selection.until else None
    async for chunk in scan(nc, stream, selection.subjects(), start_time=start_time):
        for record in chunk:
            if tokens is not None and record.subject.rsplit(".", 1)[-1] not in tokens:
                continue
            if not selection.needs_header:
                yield record, None
                continue
            try:
                header = decode_header(record.data)
            except EventDecodeError:
                yield record, None
                continue
            if stop_after is not None and header.time > stop_after:
                return
            if selection.wants(header):
                yield record, header


_TABLE_HEADER = f"{'SEQ':>6} {'TIME':29} {'RUN':22} {'TYPE':20} {'BY':12} {'ACTOR':10} WHAT"
_CSV_COLUMNS = [
    "seq",
    "time",
    "run_id",
    "type",
    "producer",
    "actor",
    "project",
    "causation_id",
    "summary",
]


async def replay(
    nc: Client, stream: str, selection: ReplayFilter, *, fmt: str = "table", out: TextIO
) -> tuple[int, int]:
    """Write the selected events to `out`; returns (events written, events that did not decode)."""
    if fmt not in FORMATS:
        raise AuditError(f"--format {fmt!r}; use one of {', '.join(FORMATS)}")
    count = invalid = 0
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if fmt == "table":
        out.write(_TABLE_HEADER + "\n")
    elif writer is not None:
        writer.writerow(_CSV_COLUMNS)
    async for record, _header in replay_records(nc, stream, selection):
        count += 1
        if fmt == "json":
            # The stored bytes as they are (no re-encoding), with the sequence put first.
            data = record.data
            if data[:2] == b'{"':
                out.write(f'{{"seq":{record.seq},{data[1:].decode("utf-8", "replace")}\n')
            else:
                invalid += 1
                raw = data.decode("utf-8", "replace")
                out.write(json.dumps({"seq": record.seq, "subject": record.subject, "raw": raw}))
                out.write("\n")
            continue
        try:
            event = decode_event(record.data)
        except EventDecodeError as exc:
            invalid += 1
            row = [record.seq, "", "", record.subject, "", "", "", "", f"not a secd event: {exc}"]
        else:
            row = [
                record.seq,
                event.time.isoformat(timespec="milliseconds"),
                event.run_id,
                event.type,
                event.producer.service,
                event.actor,
                event.project,
                event.causation_id or "",
                summarize(event),
            ]
        if writer is not None:
            writer.writerow(row)
        else:
            out.write(
                f"{row[0]:>6} {row[1]:29} {row[2]:22} {row[3]:20} {row[4]:12} "
                f"{row[5][:10]:10} {row[8]}\n"
            )
    return count, invalid


@dataclass
class AccessRow:
    """One temporary database account: whose, for which run and commits, on what, how long."""

    run_id: str
    researcher: str
    project: str
    commits: list[str]
    database: str
    account: str
    tables: list[str]
    issued_at: datetime
    expires_at: datetime
    issued_seq: int
    revoked_at: datetime | None = None
    revoked_seq: int | None = None
    refused: list[str] = field(default_factory=list)

    @property
    def revoked(self) -> bool:
        """Whether the log holds the account's credentials.revoked."""
        return self.revoked_at is not None

    def lease_passed(self, now: datetime) -> bool:
        """Whether the account's lease (expires_at) is over."""
        return self.expires_at <= now

    def as_dict(self, now: datetime) -> dict:
        """The row as JSON-ready data."""
        held = (self.revoked_at or now) - self.issued_at
        return {
            "run_id": self.run_id,
            "researcher": self.researcher,
            "project": self.project,
            "commits": self.commits,
            "database": self.database,
            "account": self.account,
            "tables": self.tables,
            "refused": self.refused,
            "from": self.issued_at.isoformat(),
            "until": self.revoked_at.isoformat() if self.revoked_at else None,
            "held_s": round(held.total_seconds(), 3),
            "status": "revoked" if self.revoked else "NOT REVOKED",
            "expires_at": self.expires_at.isoformat(),
            "lease_passed": self.lease_passed(now),
            "issued_seq": self.issued_seq,
            "revoked_seq": self.revoked_seq,
        }


async def access_rows(
    nc: Client,
    stream: str,
    *,
    run: str | None = None,
    researcher: str | None = None,
    project: str | None = None,
    table: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    open_only: bool = False,
) -> list[AccessRow]:
    """Every account issued (credentials.issued) with its revocation, if the log has one.

    `since`/`until` keep the accounts whose time of access overlaps that interval.
    """
    ReplayFilter(run=run)  # validates the run id
    run_token = run or "*"
    revoked: dict[tuple[str, str], tuple[datetime, int]] = {}
    async for chunk in scan(nc, stream, f"secd.run.{run_token}.credentials_revoked"):
        for record in chunk:
            try:
                event = decode_event(record.data)
            except EventDecodeError:
                continue
            revoked.setdefault((event.run_id, event.payload.account), (event.time, record.seq))
    rows = []
    async for chunk in scan(nc, stream, f"secd.run.{run_token}.credentials_issued"):
        for record in chunk:
            try:
                event = decode_event(record.data)
            except EventDecodeError:
                continue
            p = event.payload
            if researcher is not None and event.actor != researcher:
                continue
            if project is not None and event.project != project:
                continue
            if table is not None and table not in p.granted:
                continue
            end = revoked.get((event.run_id, p.account))
            row = AccessRow(
                run_id=event.run_id,
                researcher=event.actor,
                project=event.project,
                commits=list(p.plan.commits),
                database=p.database,
                account=p.account,
                tables=list(p.granted),
                issued_at=event.time,
                expires_at=p.expires_at,
                issued_seq=record.seq,
                revoked_at=end[0] if end else None,
                revoked_seq=end[1] if end else None,
                refused=[r.name for r in p.refused],
            )
            if open_only and row.revoked:
                continue
            if until is not None and row.issued_at > until:
                continue
            if since is not None and row.revoked_at is not None and row.revoked_at < since:
                continue
            rows.append(row)
    return rows


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{delta.total_seconds():.1f}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def write_access(
    rows: Iterable[AccessRow], *, fmt: str = "table", out: TextIO, now: datetime | None = None
) -> None:
    """Write the access report as a table, JSON lines or CSV."""
    if fmt not in FORMATS:
        raise AuditError(f"--format {fmt!r}; use one of {', '.join(FORMATS)}")
    now = now or datetime.now(UTC)
    rows = list(rows)
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(row.as_dict(now)) + "\n")
        return
    if fmt == "csv":
        columns = [
            "run_id",
            "researcher",
            "project",
            "database",
            "account",
            "tables",
            "from",
            "until",
            "held_s",
            "status",
            "expires_at",
            "lease_passed",
            "commits",
        ]
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            data = row.as_dict(now)
            data["tables"] = ";".join(row.tables)
            data["commits"] = ";".join(row.commits)
            writer.writerow(["" if data[c] is None else data[c] for c in columns])
        return
    out.write(
        f"{'RUN':22} {'RESEARCHER':12} {'PROJECT':24} {'DATABASE':10} {'TABLES':24} "
        f"{'FROM':20} {'UNTIL':20} {'HELD':>8}  COMMITS\n"
    )
    open_count = overdue = 0
    for row in rows:
        since = row.issued_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        if row.revoked_at is not None:
            until = row.revoked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        else:
            until = "NOT REVOKED"
            open_count += 1
            overdue += row.lease_passed(now)
        held = _duration((row.revoked_at or now) - row.issued_at)
        commits = ",".join(c[:7] for c in row.commits)
        out.write(
            f"{row.run_id:22} {row.researcher[:12]:12} {row.project[:24]:24} "
            f"{row.database[:10]:10} {','.join(row.tables)[:24]:24} {since:20} {until:20} "
            f"{held:>8}  {commits}\n"
        )
        if row.revoked_at is None:
            lease = row.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            state = "ENDED" if row.lease_passed(now) else "runs until"
            out.write(
                f"{'':22} ^ account {row.account} on {row.database} was never revoked; "
                f"its lease {state} {lease} UTC\n"
            )
    out.write(
        f"{len(rows)} account(s); {open_count} not revoked"
        f"{f', {overdue} of them past their lease' if overdue else ''}\n"
    )


def write_report(report: VerifyReport, *, out: TextIO, limit: int = 50) -> None:
    """Say what `verify_log` found: the first problem first, then the rest (up to `limit`)."""
    covered = (
        f"{report.checkpoints} checkpoint(s) up to seq {report.checkpointed_to}"
        if report.checkpoints
        else "no checkpoints"
    )
    out.write(
        f"stream {report.stream}: {report.events} events (seq 1..{report.last_seq}) in "
        f"{report.runs} runs; {covered}\n"
    )
    if report.clean:
        out.write("clean: every run's chain holds and every checkpoint matches\n")
        if not report.checkpoints:
            out.write(
                "note: without checkpoints only the chains were checked; an event nothing "
                "reacted to, or a whole run, could be altered unseen\n"
            )
        elif report.last_seq > report.checkpointed_to:
            out.write(
                f"note: seq {report.checkpointed_to + 1}..{report.last_seq} are newer than the "
                "last checkpoint; only their chains were checked\n"
            )
        return
    first = report.first
    assert first is not None
    out.write(f"NOT CLEAN: {report.findings_total} finding(s); the first:\n")
    out.write(f"  {first.describe()}\n")
    if first.run_id:
        out.write(f"  (run {first.run_id}: `secd audit replay --run {first.run_id}`)\n")
    rest = report.findings[1:limit]
    if rest:
        out.write("then:\n")
        for finding in rest:
            out.write(f"  {finding.describe()}\n")
    hidden = report.findings_total - 1 - len(rest)
    if hidden > 0:
        out.write(f"  … and {hidden} more\n")


def _report_json(report: VerifyReport) -> str:
    return json.dumps(
        {
            "stream": report.stream,
            "clean": report.clean,
            "events": report.events,
            "runs": report.runs,
            "last_seq": report.last_seq,
            "checkpoints": report.checkpoints,
            "checkpointed_to": report.checkpointed_to,
            "findings_total": report.findings_total,
            "findings": [
                {
                    "seq": f.seq,
                    "kind": f.kind,
                    "subject": f.subject,
                    "run_id": f.run_id,
                    "problem": f.problem,
                }
                for f in report.findings
            ],
        }
    )


def read_checkpoint_file(path: Path) -> list[Checkpoint]:
    """Checkpoints exported as JSON lines; raises AuditError naming the bad line."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise AuditError(f"cannot read checkpoints file {path}: {exc.strerror}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(decode_checkpoint(line))
            except CheckpointError as exc:
                raise AuditError(f"{path} line {number}: {exc}") from None
    return out


async def export_checkpoints(nc: Client, stream: str, out: TextIO) -> int:
    """Write every checkpoint of `stream` as a JSON line; returns how many."""
    checkpoints = await read_checkpoints(nc, stream)
    for checkpoint in checkpoints:
        out.write(encode_checkpoint(checkpoint).decode() + "\n")
    return len(checkpoints)


def _public_keys(state_dir: Path, files: list[str] | None) -> dict:
    paths = [Path(f) for f in files] if files else [state_dir / "secrets" / "checkpointer.pub"]
    keys = {}
    for path in paths:
        try:
            key = load_verify_key(path.read_text())
        except FileNotFoundError:
            if files:
                raise AuditError(f"public key file {path} does not exist") from None
            continue
        except CheckpointError as exc:
            raise AuditError(f"{path}: {exc}") from None
        keys[key_id(key)] = key
    return keys


# ---- what the `secd` command runs --------------------------------------------------------


async def _with_log(state_dir: Path, work) -> int:
    try:
        bus = await open_log(state_dir)
        try:
            return await work(bus.nc, bus.stream)
        finally:
            await bus.close()
    except (AuditError, LogReadError, CheckpointError) as exc:
        print(f"secd: {exc}", file=sys.stderr)
        return 2
    except nats.js.errors.NotFoundError:
        print(
            "secd: the log's stream does not exist on this NATS server; if it did before, it "
            "was deleted: keep the exported checkpoints as the record of what it held",
            file=sys.stderr,
        )
        return 2


async def replay_command(state_dir: Path, selection: ReplayFilter, fmt: str) -> int:
    """`secd audit replay`: exit 1 when a run was asked for and has no events."""

    async def work(nc: Client, stream: str) -> int:
        count, invalid = await replay(nc, stream, selection, fmt=fmt, out=sys.stdout)
        sys.stdout.flush()
        if invalid:
            print(
                f"secd: {invalid} stored message(s) are not secd events; run `secd audit verify`",
                file=sys.stderr,
            )
        if count == 0 and selection.run:
            print(f"secd: no events for run {selection.run}", file=sys.stderr)
            return 1
        return 0

    return await _with_log(state_dir, work)


async def access_command(state_dir: Path, fmt: str, **filters) -> int:
    """`secd audit access`."""

    async def work(nc: Client, stream: str) -> int:
        rows = await access_rows(nc, stream, **filters)
        write_access(rows, fmt=fmt, out=sys.stdout)
        return 0

    return await _with_log(state_dir, work)


async def verify_command(
    state_dir: Path,
    *,
    checkpoints_file: str | None = None,
    public_keys: list[str] | None = None,
    as_json: bool = False,
) -> int:
    """`secd audit verify`: exit 0 only when the log is clean."""

    async def work(nc: Client, stream: str) -> int:
        keys = _public_keys(state_dir, public_keys)
        if checkpoints_file:
            checkpoints = read_checkpoint_file(Path(checkpoints_file))
        else:
            checkpoints = await read_checkpoints(nc, stream)
        report = await verify_log(nc, stream, checkpoints=checkpoints, keys=keys)
        if as_json:
            print(_report_json(report))
        else:
            write_report(report, out=sys.stdout)
        return 0 if report.clean else 1

    return await _with_log(state_dir, work)


async def export_command(state_dir: Path, target: str) -> int:
    """`secd audit checkpoints export FILE` (`-` for standard output)."""

    async def work(nc: Client, stream: str) -> int:
        if target == "-":
            await export_checkpoints(nc, stream, sys.stdout)
            return 0
        path = Path(target)
        try:
            with path.open("w") as out:
                count = await export_checkpoints(nc, stream, out)
        except OSError as exc:
            raise AuditError(f"cannot write {path}: {exc.strerror}") from None
        print(
            f"{count} checkpoint(s) of {stream} written to {path}; keep it, and "
            f"{state_dir / 'secrets' / 'checkpointer.pub'}, where secd's admins cannot write",
            file=sys.stderr,
        )
        return 0

    return await _with_log(state_dir, work)
