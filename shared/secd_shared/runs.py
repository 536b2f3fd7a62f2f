"""Run state is a fold over a run's events; stage timings come from the events' times."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from secd_shared.events import (
    BuildSucceeded,
    CredentialsIssued,
    CredentialsRevoked,
    Event,
    PushReceived,
    PushVerified,
    ResultsExtended,
    ResultsPublished,
    RunFailed,
    RunFinished,
    RunRejected,
)

__all__ = ["STAGES", "RunView", "fold_event", "fold_run", "fold_runs", "run_researcher"]

# stage name -> (event that starts it, events that end it)
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "verify": (("push.received",), ("push.verified", "run.rejected")),
    "build": (("push.verified",), ("build.succeeded", "run.failed")),
    "credentials": (("build.succeeded",), ("credentials.issued", "run.failed")),
    "start": (("credentials.issued",), ("run.started", "run.failed")),
    "run": (("run.started",), ("run.finished", "run.failed")),
    "publish": (("run.finished", "run.failed", "run.rejected"), ("results.published",)),
}

_STATUS = {
    "push.received": "received",
    "push.verified": "verified",
    "build.succeeded": "built",
    "credentials.issued": "starting",
    "run.started": "running",
    "run.finished": "finished",
    "run.failed": "failed",
    "run.rejected": "rejected",
    "results.published": "published",
}


# Slots: the gateway keeps a view of every run in memory (secd_gateway.projection).
@dataclass(slots=True)
class RunView:
    """What is known of a run: where it stands, its stage timings, and its outcome."""

    run_id: str
    status: str = "received"
    outcome: str | None = None
    actor: str = ""
    project: str = ""
    ref: str = ""
    head: str = ""
    created: datetime | None = None
    updated: datetime | None = None
    reason: str | None = None
    commit: str | None = None
    log_tail: str = ""
    exit_code: int | None = None
    branch: str | None = None
    files: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    environment: str | None = None
    granted: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    revoked: bool = False
    stages: dict[str, float] = field(default_factory=dict)
    events: list[tuple[str, datetime]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (times as ISO strings, seconds rounded to milliseconds)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "outcome": self.outcome,
            "researcher": self.actor,
            "project": self.project,
            "ref": self.ref,
            "head": self.head,
            "created": self.created.isoformat() if self.created else None,
            "updated": self.updated.isoformat() if self.updated else None,
            "reason": self.reason,
            "commit": self.commit,
            "exit_code": self.exit_code,
            "log_tail": self.log_tail,
            "branch": self.branch,
            "files": self.files,
            "commits": self.commits,
            "environment": self.environment,
            "granted": self.granted,
            "refused": self.refused,
            "credentials_revoked": self.revoked,
            "stages": {name: round(seconds, 3) for name, seconds in self.stages.items()},
            "events": [{"type": t, "time": when.isoformat()} for t, when in self.events],
        }


def fold_run(run_id: str, events: Iterable[Event]) -> RunView:
    """Fold one run's events, in log order, into its view."""
    view = RunView(run_id=run_id)
    for event in events:
        fold_event(view, event)
    return view


def fold_event(view: RunView, event: Event) -> None:
    """Fold the run's next event (in log order) into its view, stage timings included.

    fold_run is this, one event at a time: a view kept up to date event by event (the
    gateway's, secd_gateway.projection) equals fold_run of the same events.
    """
    # Interned: a handful of type names, repeated in every run's view.
    view.events.append((sys.intern(event.type), event.time))
    view.created = view.created or event.time
    view.updated = event.time
    view.actor = event.actor
    view.project = event.project
    if event.type != "credentials.revoked" and not (
        view.status == "published" and event.type in _STATUS
    ):
        view.status = _STATUS.get(event.type, view.status)
    _apply(view, event.payload)
    view.stages = _stages(view)


def _stages(view: RunView) -> dict[str, float]:
    times: dict[str, datetime] = {}
    for type_, when in view.events:
        times.setdefault(type_, when)
    stages: dict[str, float] = {}
    for stage, (starts, ends) in STAGES.items():
        start = next((times[t] for t in starts if t in times), None)
        end = next((times[t] for t in ends if t in times), None)
        if start and end and end >= start:
            stages[stage] = (end - start).total_seconds()
    if view.created and view.updated:
        stages["total"] = (view.updated - view.created).total_seconds()
    return stages


def _apply(view: RunView, payload: object) -> None:
    match payload:
        case PushReceived():
            view.ref, view.head = payload.ref, payload.after
        case PushVerified():
            view.commits = list(payload.commits)
        case RunRejected():
            view.outcome, view.reason, view.commit = "rejected", payload.reason, payload.commit
        case BuildSucceeded():
            view.environment = payload.plan.environment
        case CredentialsIssued():
            view.granted = list(payload.granted)
            view.refused = [{"name": r.name, "reason": r.reason} for r in payload.refused]
        case RunFinished():
            view.outcome, view.exit_code = "succeeded", payload.exit_code
        case RunFailed():
            view.outcome, view.reason = "failed", payload.reason
            view.exit_code, view.log_tail = payload.exit_code, payload.log_tail
        case ResultsPublished():
            view.branch, view.files = payload.branch, list(payload.files)
        case ResultsExtended():
            # Files officers released later: on the same branch, in a further commit.
            view.files = sorted({*view.files, *payload.files})
        case CredentialsRevoked():
            view.revoked = True


def run_researcher(events: Iterable[Event]) -> str:
    """The run's researcher, as the verifier named them (push.verified); "" before that.

    Not the first event's actor: push.received's actor is the forge account that pushed, and
    later events (an officer's review.recorded) carry other actors.
    """
    return next((e.payload.researcher for e in events if isinstance(e.payload, PushVerified)), "")


def fold_runs(events: Iterable[Event]) -> dict[str, RunView]:
    """Fold a stream of events of many runs: run id -> view, in order of first appearance."""
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.run_id, []).append(event)
    return {run_id: fold_run(run_id, evs) for run_id, evs in grouped.items()}
