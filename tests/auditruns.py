"""Synthetic runs for the audit tests, chained exactly as the worker loop chains real ones."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from secd_shared.events import (
    BuildSucceeded,
    CredentialsIssued,
    CredentialsRevoked,
    DatabaseAddress,
    Event,
    Producer,
    PushReceived,
    PushVerified,
    Refusal,
    ResultsPublished,
    RunFinished,
    RunPlan,
    RunRejected,
    RunSpec,
    RunStarted,
    encode_event,
    new_event,
    new_run_id,
    subject_for,
)


@dataclass(frozen=True)
class Stored:
    """An event as it goes into the log: its subject, its exact bytes, and the event."""

    subject: str
    data: bytes
    event: Event


def build_run(
    *,
    researcher: str = "alice",
    project: str = "alice/model",
    pusher: str | None = None,
    start: datetime | None = None,
    rejected: bool = False,
    revoked: bool = True,
    expires_at: datetime | None = None,
    tables: tuple[str, ...] = ("patients",),
    run_id: str | None = None,
    outputs: str = "",
) -> list[Stored]:
    """One run's events, each chained to its cause by id and by the hash of its stored bytes.

    `run_id` defaults to new_run_id() with four more hex digits, which the gateway's read API
    does not take: pass new_run_id() for runs read through it. `outputs`: the run.finished's
    outputs tree (an artifact digest), for tests that read the outputs.
    """
    run_id = run_id or new_run_id() + secrets.token_hex(2)
    start = start or datetime.now(UTC)
    head = secrets.token_hex(20)
    out: list[Stored] = []

    def emit(payload, service: str, cause: Stored | None, actor: str = researcher) -> Stored:
        event = new_event(
            payload,
            run_id=run_id,
            producer=Producer(service, "test"),
            actor=actor,
            project=project,
            cause=cause.event if cause else None,
            cause_data=cause.data if cause else None,
        )
        event = msgspec.structs.replace(event, time=start + timedelta(seconds=len(out)))
        stored = Stored(subject_for(run_id, event.type), encode_event(event), event)
        out.append(stored)
        return stored

    received = emit(
        PushReceived(
            forge="git", repository=project, ref="refs/heads/main", before="0" * 40,
            after=head, pusher=pusher or researcher,
        ),
        "gateway", None, actor=pusher or researcher,
    )  # fmt: skip
    if rejected:
        refusal = emit(
            RunRejected(
                repository=project, ref="refs/heads/main", head=head, commit=head,
                reason=f"commit {head[:7]} is not signed",
            ),
            "verifier", received,
        )  # fmt: skip
        emit(
            ResultsPublished(
                repository=project, branch=f"secd/{run_id}", commit=head, outcome="rejected",
                files=[],
            ),
            "publisher", refusal,
        )  # fmt: skip
        return out
    verified = emit(
        PushVerified(
            repository=project, ref="refs/heads/main", head=head, commits=[head],
            researcher=researcher, keys=["A" * 40],
        ),
        "verifier", received,
    )  # fmt: skip
    plan = RunPlan(
        repository=project, ref="refs/heads/main", head=head, commits=[head],
        environment="sha256:" + "e" * 64, source="sha256:" + "5" * 64,
        spec=RunSpec(runfor=0.5),
    )  # fmt: skip
    built = emit(
        BuildSucceeded(plan=plan, reused=False, build_log="sha256:" + "b" * 64, build_s=1.0),
        "builder",
        verified,
    )
    account = f"secd_{run_id}"
    issued = emit(
        CredentialsIssued(
            plan=plan, database="sensitive", account=account,
            address=DatabaseAddress(kind="postgres", database="sensitive", socket="/run/pg"),
            sealed_password=secrets.token_urlsafe(48), granted=list(tables),
            refused=[Refusal(name="billing", reason="no such group")],
            expires_at=expires_at or start + timedelta(hours=1),
        ),
        "credentials", built,
    )  # fmt: skip
    emit(RunStarted(sandbox=f"secd-{run_id}"), "executor", issued)
    finished = emit(
        RunFinished(exit_code=0, duration_s=1.5, outputs=outputs),
        "executor", issued,
    )  # fmt: skip
    if revoked:
        emit(CredentialsRevoked(account=account, backend="postgres"), "credentials", finished)
    emit(
        ResultsPublished(
            repository=project, branch=f"secd/{run_id}", commit=head, outcome="succeeded",
            files=["model.json"],
        ),
        "publisher", finished,
    )  # fmt: skip
    return out


async def write_runs(js, runs: list[list[Stored]], *, prefix: str = "") -> None:
    """Store the runs' events in order (with the bus's once-only headers); `prefix` picks a
    test stream whose subject transform stores them under their real subjects."""
    for run in runs:
        for stored in run:
            await js.publish(
                prefix + stored.subject,
                stored.data,
                headers={"Nats-Msg-Id": f"{stored.event.run_id}.{stored.event.type}"},
            )
