"""`secd audit`: the security officer's view of the event log, read with the auditor identity."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

__all__ = ["open_log", "replay", "summarize"]


async def open_log(state_dir: Path):
    """An EventBus connected as the read-only auditor identity of the stack in `state_dir`."""
    from secd_shared.bus import EventBus, connect
    from secd_shared.config import NatsConfig

    config = tomllib.loads((state_dir / "secd.toml").read_text())
    secret = json.loads((state_dir / "secrets" / "stack.json").read_text())
    nats = NatsConfig(url=config["nats"]["url"], user="auditor", password=secret["nats"]["auditor"])
    return EventBus(await connect(nats, "auditor"), config["nats"].get("stream", "SECD"))


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
    return ""


async def replay(state_dir: Path, *, run_id: str | None = None, as_json: bool = False) -> int:
    """Print the log (or one run of it) as a table or as JSON lines."""
    bus = await open_log(state_dir)
    subjects = f"secd.run.{run_id}.>" if run_id else "secd.run.>"
    count = 0
    try:
        if not as_json:
            print(f"{'SEQ':>6} {'TIME':26} {'RUN':22} {'TYPE':20} {'BY':12} {'ACTOR':10} WHAT")
        async for stored in bus.read(subjects):
            event = stored.event
            count += 1
            if as_json:
                line = json.loads(stored.data)
                line["seq"] = stored.seq
                sys.stdout.write(json.dumps(line) + "\n")
            else:
                print(
                    f"{stored.seq:>6} {event.time.isoformat(timespec='milliseconds'):26} "
                    f"{event.run_id:22} {event.type:20} {event.producer.service:12} "
                    f"{event.actor[:10]:10} {summarize(event)}"
                )
    finally:
        await bus.close()
    if count == 0 and run_id:
        print(f"secd: no events for run {run_id}", file=sys.stderr)
        return 1
    return 0
