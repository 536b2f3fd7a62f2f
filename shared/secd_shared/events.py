"""The events of a run: what each service emits, as frozen msgspec Structs.

Every event is an envelope (`Event`) around a typed payload. The envelope's `type` names the
payload, and the payload carries the same name as its tag, so a decoder can check the two agree.
Events hold metadata only: never a password in clear, never a row, never job output.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Literal

import msgspec
from msgspec import Struct

from secd_shared.dbkind import DbKind
from secd_shared.limits import RequestedLimits

# new_run_id lives in runid.py; it stays importable from here, where callers found it first.
from secd_shared.runid import new_run_id

__all__ = [
    "EVENT_TYPES",
    "OUTPUT_KINDS",
    "REPEATABLE_TYPES",
    "TERMINAL_TYPES",
    "AnyPayload",
    "BuildSucceeded",
    "CheckResult",
    "CheckedFile",
    "CredentialsIssued",
    "CredentialsRevokeFailed",
    "CredentialsRevoked",
    "DatabaseAddress",
    "DeclaredOutput",
    "Event",
    "EventDecodeError",
    "HeldFile",
    "OutputKind",
    "OutputsAttacked",
    "OutputsChecked",
    "OutputsHeld",
    "OutputsReleased",
    "OutputsWithheld",
    "Payload",
    "Producer",
    "PushReceived",
    "PushVerified",
    "Refusal",
    "ReleasedFile",
    "ResultsExtended",
    "ResultsPublished",
    "ReviewFetched",
    "ReviewRecorded",
    "ReviewRequested",
    "RunFailed",
    "RunFinished",
    "RunPlan",
    "RunRejected",
    "RunSpec",
    "RunStarted",
    "Verdict",
    "WithheldFile",
    "decode_event",
    "encode_event",
    "event_hash",
    "new_event",
    "new_run_id",
    "subject_for",
    "type_token",
]


class Payload(Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every payload; the tag is the event type, e.g. ``push.received``."""


OutputKind = Literal["table", "counts", "figure", "text", "metrics", "model"]
OUTPUT_KINDS: tuple[str, ...] = ("table", "counts", "figure", "text", "metrics", "model")
Verdict = Literal["pass", "review", "block"]


class DeclaredOutput(Struct, frozen=True, kw_only=True):
    """One entry of secd.yml's `outputs:`: files the job means to release, and what they are."""

    glob: str  # the entry's glob in secd.yml, relative to the output folder: "counts/*.csv"
    kind: OutputKind
    description: str = ""


class RunSpec(Struct, frozen=True, kw_only=True):
    """The researcher's `secd.yml`, validated: how long, with what, from where."""

    runfor: float = 3.0
    gpu: int = 0
    cache_dir: str | None = None
    # Where the cache appears inside the sandbox (secd.yml's mount point key; never a host folder).
    cache_mount: str = "/cache"
    command: list[str] = msgspec.field(default_factory=lambda: ["python", "main.py"])
    database: str | None = None
    # What the project asked for (`limits:`); the executor fills in the site's defaults.
    limits: RequestedLimits | None = None
    # secd.yml's `outputs:`; a file the job writes that matches none is never released.
    outputs: list[DeclaredOutput] = msgspec.field(default_factory=list)
    # secd.yml's `replay:`: run the job again without a few random rows (neighbour replay).
    replay: bool = False


class RunPlan(Struct, frozen=True, kw_only=True):
    """What the builder prepared for a run, carried forward to the executor."""

    repository: str
    ref: str
    head: str
    commits: list[str]
    # What the run runs with, by digest: the environment artifact (a virtualenv, `sha256:...`,
    # secd_shared.artifacts), or for an image the image's own digest (repo@sha256:...).
    environment: str
    spec: RunSpec
    # The source tree at `head` as an artifact (a tar, by digest); "" when the image holds it.
    source: str = ""
    # The built image by digest (repo@sha256:...) when the builder is BuildKit; None for a venv.
    image: str | None = None


class DatabaseAddress(Struct, frozen=True, kw_only=True):
    """Where the run's database is; the executor routes the sandbox to it."""

    kind: DbKind
    database: str
    host: str | None = None
    port: int | None = None
    socket: str | None = None


class Refusal(Struct, frozen=True, kw_only=True):
    """A group or table that was not granted, and why."""

    name: str
    reason: str


class PushReceived(Payload, frozen=True, tag="push.received"):
    """gateway: the forge reported a push; nothing about it is trusted yet."""

    forge: str
    repository: str
    ref: str
    before: str
    after: str
    pusher: str
    # forge = "gitlab": the ids GitLab gave the pusher and the project (names can change).
    forge_user_id: int | None = None
    forge_project_id: int | None = None


class PushVerified(Payload, frozen=True, tag="push.verified"):
    """verifier: every commit that needed checking is signed by one of the pusher's keys."""

    repository: str
    ref: str
    head: str
    commits: list[str]
    researcher: str
    keys: list[str]


class RunRejected(Payload, frozen=True, tag="run.rejected"):
    """verifier: the push will not run; the reason names the offending commit."""

    repository: str
    ref: str
    head: str
    reason: str
    commit: str | None = None
    # The pusher is no researcher secd knows: nothing (branch, status) goes into the repository.
    unknown_pusher: bool = False


class BuildSucceeded(Payload, frozen=True, tag="build.succeeded"):
    """builder: the run's environment and source are ready."""

    plan: RunPlan
    reused: bool
    build_s: float
    # The installer's (or BuildKit's) log, as an artifact; "" when there is none.
    build_log: str = ""


class CredentialsIssued(Payload, frozen=True, tag="credentials.issued"):
    """credentials: a temporary account exists; its password is sealed to the executor's key."""

    plan: RunPlan
    database: str
    account: str
    address: DatabaseAddress
    sealed_password: str
    granted: list[str]
    refused: list[Refusal]
    expires_at: datetime
    # Neighbour replay: a second account reading the granted tables less a few random rows
    # (which ones is never in an event), its password sealed like the first; None: no replay.
    replay_account: str | None = None
    replay_sealed_password: str | None = None


class RunStarted(Payload, frozen=True, tag="run.started"):
    """executor: the sandbox is running the researcher's command."""

    sandbox: str


class RunFinished(Payload, frozen=True, tag="run.finished"):
    """executor: the command exited (with any exit code) within its time."""

    exit_code: int
    duration_s: float
    # What the job wrote (a tree artifact) and its log (an artifact), by digest.
    outputs: str = ""
    log: str = ""
    # Neighbour replay: what the second run wrote and its log, by digest; "" when none ran.
    # The replay's log is for officers only.
    replay_outputs: str = ""
    replay_log: str = ""


class RunFailed(Payload, frozen=True, tag="run.failed"):
    """any stage: the run cannot go on; the reason is one line a researcher can act on."""

    stage: str
    reason: str
    log_tail: str = ""
    exit_code: int | None = None
    # For a run whose job ran: what it wrote and its log, by digest (as in run.finished).
    outputs: str | None = None
    log: str | None = None


class CredentialsRevoked(Payload, frozen=True, tag="credentials.revoked"):
    """credentials: the run's account is locked, its sessions ended, and dropped."""

    account: str
    backend: DbKind


class CredentialsRevokeFailed(Payload, frozen=True, tag="credentials.revoke_failed"):
    """credentials: revoking the run's account failed; it is retried until it succeeds."""

    account: str
    backend: DbKind
    reason: str


class ResultsPublished(Payload, frozen=True, tag="results.published"):
    """publisher: the outcome is in the repository as a branch."""

    repository: str
    branch: str
    commit: str
    outcome: str
    files: list[str]


class ResultsExtended(Payload, frozen=True, tag="results.extended"):
    """publisher: files security officers released after the first publication, added to the
    run's branch as a further commit. Repeatable: one per later release."""

    repository: str
    branch: str
    commit: str
    files: list[str]
    by: list[str]  # the officers whose approvals released them


class CheckResult(Struct, frozen=True, kw_only=True):
    """One automatic check of one output: its name, version, verdict and evidence in words.

    Evidence names what was found (counts, columns, tables, the check's figures), never a value
    of the data: the audit log is read by people the data must not reach either.
    """

    name: str
    version: int
    verdict: Verdict
    evidence: str = ""


class CheckedFile(Struct, frozen=True, kw_only=True):
    """An output file as the airlock saw it; `sha256` names it in reviews and releases."""

    # Relative to the outputs; a held file's name that failed its own checks: "(withheld name)".
    name: str
    size: int
    sha256: str
    kind: str  # the declared kind, or "undeclared"
    checks: list[CheckResult]
    verdict: Verdict
    # What a release needs: "automatic", "review" (two officers), "override" (two, with reasons).
    route: str


class OutputsChecked(Payload, frozen=True, tag="outputs.checked"):
    """airlock: every output and the job log went through the automatic checks."""

    files: list[CheckedFile]
    log: list[CheckResult]
    # The job log with the lines that failed a check replaced by markers (an artifact).
    redacted_log: str = ""
    undeclared: int = 0
    verdict: Verdict = "pass"


class HeldFile(Struct, frozen=True, kw_only=True):
    sha256: str
    name: str
    route: str
    reason: str


class OutputsHeld(Payload, frozen=True, tag="outputs.held"):
    """airlock: these files stay on the secure side until security officers decide."""

    files: list[HeldFile]


class ReleasedFile(Struct, frozen=True, kw_only=True):
    name: str
    sha256: str
    # The released content (an artifact): the file itself, or an image re-encoded without its
    # metadata chunks.
    artifact: str


class OutputsReleased(Payload, frozen=True, tag="outputs.released"):
    """airlock: these files (and the redacted log) may go to the researcher. Repeatable: the
    first release comes with the checks, later ones follow officers' decisions."""

    files: list[ReleasedFile]
    log: str = ""  # the redacted job log (an artifact), in the first release
    by: list[str] = msgspec.field(default_factory=list)  # officers; empty: automatic
    first: bool = False


class WithheldFile(Struct, frozen=True, kw_only=True):
    sha256: str
    name: str
    reason: str


class OutputsWithheld(Payload, frozen=True, tag="outputs.withheld"):
    """airlock: officers decided these files never leave."""

    files: list[WithheldFile]
    by: list[str]


class ReviewRecorded(Payload, frozen=True, tag="review.recorded"):
    """gateway: a security officer's decision on one held file. Repeatable (one per officer
    and file)."""

    officer: str
    sha256: str
    decision: Literal["approve", "reject"]
    reason: str


class ReviewRequested(Payload, frozen=True, tag="review.requested"):
    """gateway: a security officer asked the airlock for a dearer attack on one held file
    (LiRA on a model). Repeatable."""

    officer: str
    sha256: str
    attack: Literal["lira"]


class OutputsAttacked(Payload, frozen=True, tag="outputs.attacked"):
    """airlock: what an attack an officer asked for (review.requested, its cause) found in one
    held file: a verdict, evidence in words and the attack's figures, never a value of the
    data. Repeatable (one per request)."""

    sha256: str
    attack: str
    verdict: Verdict
    evidence: str
    figures: dict[str, float] = msgspec.field(default_factory=dict)
    request: str = ""  # the id of the review.requested event it answers


class ReviewFetched(Payload, frozen=True, tag="review.fetched"):
    """gateway: a security officer read one held file on the secure side (`secd review
    fetch`): who read which file, by sha256. Repeatable (one per read)."""

    officer: str
    sha256: str


AnyPayload = (
    PushReceived
    | PushVerified
    | RunRejected
    | BuildSucceeded
    | CredentialsIssued
    | RunStarted
    | RunFinished
    | RunFailed
    | CredentialsRevoked
    | CredentialsRevokeFailed
    | ResultsPublished
    | ResultsExtended
    | OutputsChecked
    | OutputsHeld
    | OutputsReleased
    | OutputsWithheld
    | ReviewRecorded
    | ReviewRequested
    | OutputsAttacked
    | ReviewFetched
)


def _tag(cls: type[Payload]) -> str:
    """The event type a payload class is tagged with (every payload class sets tag="...")."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str), f"{cls.__name__} has no tag"
    return tag


EVENT_TYPES: tuple[str, ...] = tuple(
    _tag(cls)
    for cls in (
        PushReceived,
        PushVerified,
        RunRejected,
        BuildSucceeded,
        CredentialsIssued,
        RunStarted,
        RunFinished,
        RunFailed,
        CredentialsRevoked,
        CredentialsRevokeFailed,
        ResultsPublished,
        ResultsExtended,
        OutputsChecked,
        OutputsHeld,
        OutputsReleased,
        OutputsWithheld,
        ReviewRecorded,
        ReviewRequested,
        OutputsAttacked,
        ReviewFetched,
    )
)
# Written more than once per run; the writer gives each a message id from its content.
REPEATABLE_TYPES: tuple[str, ...] = (
    "outputs.released",
    "outputs.withheld",
    "review.recorded",
    "review.requested",
    "outputs.attacked",
    "review.fetched",
    "results.extended",
)
# After one of these nothing more runs for the run; credentials revoke, the publisher publishes.
TERMINAL_TYPES: tuple[str, ...] = ("run.finished", "run.failed", "run.rejected")


class Producer(Struct, frozen=True):
    """Which service (and version) wrote an event."""

    service: str
    version: str


class Event(Struct, frozen=True, kw_only=True):
    """One entry of the audit log: who did what for which run, reacting to which event."""

    id: str
    run_id: str
    type: str
    time: datetime
    producer: Producer
    actor: str
    project: str
    payload: AnyPayload
    causation_id: str | None = None
    causation_hash: str | None = None


class EventDecodeError(ValueError):
    """Raised for bytes that are not a valid secd event."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def type_token(event_type: str) -> str:
    """The subject token of an event type: ``push.received`` -> ``push_received``."""
    return event_type.replace(".", "_")


def subject_for(run_id: str, event_type: str) -> str:
    """The subject an event of a run is published on."""
    return f"secd.run.{run_id}.{type_token(event_type)}"


def event_hash(data: bytes) -> str:
    """The hash another event uses to name this one (sha256 of its stored bytes)."""
    return hashlib.sha256(data).hexdigest()


def new_event(
    payload: AnyPayload,
    *,
    run_id: str,
    producer: Producer,
    actor: str,
    project: str,
    cause: Event | None = None,
    cause_data: bytes | None = None,
) -> Event:
    """Wrap a payload in an envelope, chained to the event it reacts to."""
    return Event(
        id=secrets.token_hex(12),
        run_id=run_id,
        type=_tag(type(payload)),
        time=datetime.now(UTC),
        producer=producer,
        actor=actor,
        project=project,
        payload=payload,
        causation_id=cause.id if cause else None,
        causation_hash=event_hash(cause_data) if cause_data is not None else None,
    )


def encode_event(event: Event) -> bytes:
    """The bytes stored in the log for an event."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    """Decode stored bytes; raises EventDecodeError naming what is wrong."""
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise EventDecodeError(f"not a secd event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None
    if event.type != event.payload.__struct_config__.tag:
        raise EventDecodeError(
            f"event {event.id} says type {event.type!r} "
            f"but carries {event.payload.__struct_config__.tag!r}"
        )
    return event
