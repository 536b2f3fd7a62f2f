"""Is the log what was written? Per-run hash chains, signed checkpoints, and their verification.

Two independent checks, because each catches what the other cannot:

- **The chain.** Every event but a run's `push.received` carries `causation_id` and
  `causation_hash`, the sha256 of the stored bytes of the event it reacts to. Altering an event
  that something reacted to breaks the hash its successor recorded, and names the event.
- **The running hash.** `hash_n = sha256(hash_{n-1} || seq_n || subject_n || sha256(data_n))`
  over every message of the stream in sequence order (`hash_0` = 32 zero bytes). The
  checkpointer signs it with its own Ed25519 key every so often, into a stream of its own. An
  altered, removed or inserted event anywhere, leaf events and whole runs included, changes the
  running hash of every later checkpoint; each checkpoint also covers the range since the one
  before it (`first_seq`..`last_seq`), so the range that changed is named.

Checkpoints are only as good as the place they are kept: export them (`secd audit checkpoints
export`) and keep the file and the checkpointer's public key where the secd machine's admins
cannot write.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats.errors
from msgspec import Struct
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from nats.aio.client import Client

from secd_shared.events import EventDecodeError, subject_for
from secd_shared.logscan import Record, decode_header, scan

__all__ = [
    "CHECKPOINT_STREAM",
    "GENESIS",
    "Checkpoint",
    "CheckpointError",
    "Finding",
    "LogVerifier",
    "VerifyReport",
    "chain_step",
    "checkpoint_subject",
    "decode_checkpoint",
    "encode_checkpoint",
    "generate_signing_key",
    "key_id",
    "last_checkpoint",
    "load_signing_key",
    "load_verify_key",
    "make_checkpoint",
    "read_checkpoints",
    "sign_checkpoint",
    "signature_problem",
    "verify_log",
]

CHECKPOINT_STREAM = "SECD_CHECKPOINTS"
GENESIS = bytes(32)
# Signatures cover this prefix too, so a checkpoint signature means nothing anywhere else.
_SIGNING_CONTEXT = b"secd-checkpoint-v1\n"
# Findings kept in a report, the earliest; the rest are only counted (one event can cause many).
MAX_FINDINGS = 1000


def checkpoint_subject(stream: str) -> str:
    """The subject checkpoints of `stream` are stored on (stream names hold no dots)."""
    return f"secd.checkpoint.{stream}"


def chain_step(previous: bytes, seq: int, subject: str, data: bytes) -> bytes:
    """The running hash after one more stored message."""
    return _step(previous, seq, subject, hashlib.sha256(data).digest())


def _step(previous: bytes, seq: int, subject: str, digest: bytes) -> bytes:
    # NATS subjects hold no whitespace: the newline ends the subject unambiguously.
    return hashlib.sha256(
        previous + seq.to_bytes(8, "big") + subject.encode() + b"\n" + digest
    ).digest()


class CheckpointError(Exception):
    """A checkpoint or a checkpointer key is unusable; the message says which and why."""


class Checkpoint(Struct, frozen=True, kw_only=True):
    """A signed statement: the running hash of `stream` over seq 1..last_seq was running_hash.

    `first_seq` is where the range since the previous checkpoint starts.
    """

    stream: str
    first_seq: int
    last_seq: int
    running_hash: str
    time: str
    key_id: str
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, in a fixed encoding."""
        body = msgspec.structs.asdict(self)
        del body["signature"]
        return _SIGNING_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


_checkpoint_decoder = msgspec.json.Decoder(Checkpoint)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """A checkpoint as one line of JSON (as stored, and as exported)."""
    return msgspec.json.encode(checkpoint)


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Read a checkpoint; raises CheckpointError naming what is wrong."""
    try:
        return _checkpoint_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise CheckpointError(f"not a checkpoint: {exc}") from None


def key_id(key: VerifyKey) -> str:
    """A short name for a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(bytes(key)).hexdigest()[:16]


def generate_signing_key(private_path: Path) -> str:
    """Write a new Ed25519 signing key (mode 0600); return its base64 public key."""
    key = SigningKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(base64.b64encode(bytes(key)))
    return base64.b64encode(bytes(key.verify_key)).decode()


def load_signing_key(path: Path) -> SigningKey:
    """Read a key written by generate_signing_key; raises CheckpointError if it is not one."""
    try:
        return SigningKey(base64.b64decode(Path(path).read_bytes(), validate=True))
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpointer key {path} does not exist; `secd up` creates it, or set "
            "checkpointer.private_key_file"
        ) from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"checkpointer key {path} is not a base64 Ed25519 key ({exc})"
        ) from None


def load_verify_key(text: str) -> VerifyKey:
    """A public key from its base64 text; raises CheckpointError if it is not one."""
    try:
        return VerifyKey(base64.b64decode(text.strip(), validate=True))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"not a base64 Ed25519 public key ({exc})") from None


def sign_checkpoint(
    key: SigningKey, *, stream: str, first_seq: int, last_seq: int, running_hash: bytes
) -> Checkpoint:
    """A new checkpoint, signed with `key`."""
    unsigned = Checkpoint(
        stream=stream,
        first_seq=first_seq,
        last_seq=last_seq,
        running_hash=running_hash.hex(),
        time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        key_id=key_id(key.verify_key),
    )
    signature = key.sign(unsigned.signed_bytes()).signature
    return msgspec.structs.replace(unsigned, signature=base64.b64encode(signature).decode())


def signature_problem(checkpoint: Checkpoint, keys: dict[str, VerifyKey]) -> str | None:
    """None if one of `keys` signed the checkpoint as it is; else what is wrong."""
    key = keys.get(checkpoint.key_id)
    if key is None:
        known = ", ".join(sorted(keys)) or "none given"
        return f"signed with key {checkpoint.key_id}, which is not a known key ({known})"
    try:
        key.verify(checkpoint.signed_bytes(), base64.b64decode(checkpoint.signature))
    except (BadSignatureError, ValueError):
        return (
            f"signature does not verify with key {checkpoint.key_id}: "
            "the checkpoint was altered or forged"
        )
    return None


async def _direct_get_last(nc: Client, stream: str, subject: str) -> tuple[int, bytes] | None:
    try:
        reply = await nc.request(
            f"$JS.API.DIRECT.GET.{stream}",
            json.dumps({"last_by_subj": subject}).encode(),
            timeout=5.0,
        )
    except nats.errors.NoRespondersError:
        raise CheckpointError(
            f"stream {stream} does not answer direct gets; does it exist (`secd up` makes it)?"
        ) from None
    headers = reply.headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        raise CheckpointError(
            f"reading stream {stream} failed: {status} {headers.get('Description', '')}".strip()
        )
    return int(headers["Nats-Sequence"]), reply.data


async def last_checkpoint(nc: Client, stream: str) -> tuple[int, Checkpoint] | None:
    """The newest checkpoint of `stream` and its sequence in the checkpoint stream, if any."""
    found = await _direct_get_last(nc, CHECKPOINT_STREAM, checkpoint_subject(stream))
    if found is None:
        return None
    seq, data = found
    return seq, decode_checkpoint(data)


async def read_checkpoints(nc: Client, stream: str) -> list[Checkpoint]:
    """Every checkpoint of `stream` kept in the checkpoint stream, oldest first."""
    out = []
    async for chunk in scan(nc, CHECKPOINT_STREAM, checkpoint_subject(stream), batch=1000):
        for record in chunk:
            try:
                out.append(decode_checkpoint(record.data))
            except CheckpointError as exc:
                raise CheckpointError(f"{CHECKPOINT_STREAM} seq {record.seq}: {exc}") from None
    return out


async def make_checkpoint(nc: Client, stream: str, key: SigningKey) -> Checkpoint | None:
    """Extend the newest checkpoint of `stream` up to its last message and store it, signed.

    Returns None when nothing was written since. Only a checkpoint this key signed is
    extended; two checkpointers racing cannot both extend the same one (the second store is
    refused: expected last subject sequence).
    """
    js = nc.jetstream()
    head = (await js.stream_info(stream)).state.last_seq
    found = await last_checkpoint(nc, stream)
    running, start, previous_seq = GENESIS, 1, 0
    if found is not None:
        previous_seq, previous = found
        problem = signature_problem(previous, {key_id(key.verify_key): key.verify_key})
        if problem:
            raise CheckpointError(
                f"the newest checkpoint of {stream} ({CHECKPOINT_STREAM} seq {previous_seq}) "
                f"cannot be extended: {problem}; run `secd audit verify`"
            )
        if head < previous.last_seq:
            raise CheckpointError(
                f"stream {stream} ends at seq {head} but its checkpoint covers up to "
                f"{previous.last_seq}: events were removed; run `secd audit verify`"
            )
        running, start = bytes.fromhex(previous.running_hash), previous.last_seq + 1
    if head < start:
        return None
    async for chunk in scan(nc, stream, start_seq=start, stop_seq=head):
        for record in chunk:
            running = chain_step(running, record.seq, record.subject, record.data)
    checkpoint = sign_checkpoint(
        key, stream=stream, first_seq=start, last_seq=head, running_hash=running
    )
    await js.publish(
        checkpoint_subject(stream),
        encode_checkpoint(checkpoint),
        headers={
            "Nats-Msg-Id": f"{stream}.{head}",
            "Nats-Expected-Last-Subject-Sequence": str(previous_seq),
        },
    )
    return checkpoint


@dataclass(frozen=True, order=True)
class Finding:
    """One thing that does not match, at a sequence of the log, said for an officer."""

    seq: int
    kind: str  # altered | missing | invalid | chain | checkpoint | signature | stream
    problem: str
    subject: str = ""
    run_id: str = ""
    # For a finding about a range (a checkpoint's): where it starts; `seq` is where it ends,
    # so an event named inside the range comes first.
    from_seq: int | None = None

    def describe(self) -> str:
        """One line: where, what kind, what is wrong."""
        where = f"seq {self.seq}" if self.seq else "log"
        if self.from_seq is not None and self.from_seq != self.seq:
            where = f"seq {self.from_seq}..{self.seq}"
        if self.subject:
            where += f" ({self.subject})"
        return f"{where}: {self.kind}: {self.problem}"


@dataclass
class VerifyReport:
    """What `verify_log` found: counts, checkpoints, and every finding in log order."""

    stream: str
    events: int = 0
    runs: int = 0
    last_seq: int = 0
    checkpoints: int = 0
    checkpointed_to: int = 0
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0

    @property
    def clean(self) -> bool:
        """Nothing found."""
        return self.findings_total == 0

    @property
    def first(self) -> Finding | None:
        """The earliest finding in log order."""
        return self.findings[0] if self.findings else None


class LogVerifier:
    """Feed it the stream's records in order; it checks the chain, gaps and checkpoints.

    Memory grows with the number of events (one id, run and digest each), not their size.
    """

    def __init__(
        self,
        stream: str,
        checkpoints: Iterable[Checkpoint] = (),
        keys: dict[str, VerifyKey] | None = None,
        *,
        checkpoints_of: str | None = None,
    ) -> None:
        self.report = VerifyReport(stream=stream)
        self.keys = keys or {}
        self._findings: list[Finding] = []
        self._events: dict[str, tuple[str, int, bytes, str]] = {}
        self._runs: set[str] = set()
        self._expected = 1
        self._running = GENESIS
        self._range = GENESIS
        self._range_start = 1
        owner = checkpoints_of or stream
        # The same checkpoint twice (a file and the stream, say) counts once.
        unique = {c.signature or encode_checkpoint(c): c for c in checkpoints}
        self._checkpoints: list[tuple[Checkpoint, bool]] = []
        for checkpoint in sorted(unique.values(), key=lambda c: (c.last_seq, c.first_seq)):
            if checkpoint.stream != owner:
                self._add(
                    0, "checkpoint", f"a checkpoint of stream {checkpoint.stream}, not {owner}"
                )
                continue
            problem = signature_problem(checkpoint, self.keys)
            if problem is None and not _is_hex(checkpoint.running_hash):
                problem = "its running hash is not 64 hex digits"
            if problem:
                self._add(
                    checkpoint.last_seq,
                    "signature",
                    f"checkpoint of seq {checkpoint.first_seq}..{checkpoint.last_seq} "
                    f"({checkpoint.time}): {problem}",
                )
            self._checkpoints.append((checkpoint, problem is None))
        self._next_cp = 0
        self._range_known = True
        self.report.checkpoints = sum(trusted for _, trusted in self._checkpoints)

    def _add(
        self,
        seq: int,
        kind: str,
        problem: str,
        subject: str = "",
        run_id: str = "",
        from_seq: int | None = None,
    ) -> None:
        self.report.findings_total += 1
        self._findings.append(Finding(seq, kind, problem, subject, run_id, from_seq))
        if len(self._findings) > 2 * MAX_FINDINGS:
            # Keep the earliest in log order (an altered cause is found after later events).
            self._findings = sorted(self._findings)[:MAX_FINDINGS]

    def feed(self, record: Record) -> None:
        """Check one stored message (records must come in sequence order)."""
        seq, subject, data = record.seq, record.subject, record.data
        while (
            self._next_cp < len(self._checkpoints)
            and self._checkpoints[self._next_cp][0].last_seq < seq
        ):
            self._close_checkpoint(*self._checkpoints[self._next_cp], seq - 1)
            self._next_cp += 1
        if seq > self._expected:
            missing = (
                f"{self._expected}" if seq - 1 == self._expected else f"{self._expected}..{seq - 1}"
            )
            self._add(
                self._expected,
                "missing",
                f"seq {missing} missing: a gap in the log's sequence numbers (deleted or lost)",
            )
        self._expected = seq + 1
        digest = hashlib.sha256(data).digest()
        self._running = _step(self._running, seq, subject, digest)
        self._range = _step(self._range, seq, subject, digest)
        self.report.events += 1
        self.report.last_seq = seq
        self._check_chain(seq, subject, data, digest)

    def _check_chain(self, seq: int, subject: str, data: bytes, digest: bytes) -> None:
        try:
            event = decode_header(data)
        except EventDecodeError as exc:
            self._add(seq, "invalid", f"not a secd event ({exc})", subject)
            return
        run = event.run_id
        if subject != subject_for(run, event.type):
            self._add(
                seq,
                "altered",
                f"stored on {subject} but says it is {event.type} of run {run}",
                subject,
                run,
            )
        if event.id in self._events:
            _, first, _, _ = self._events[event.id]
            self._add(
                seq, "chain", f"event id {event.id} was already used by seq {first}", subject, run
            )
        else:
            self._events[event.id] = (run, seq, digest, subject)
        self._runs.add(run)
        if event.type == "push.received":
            if event.causation_id or event.causation_hash:
                self._add(
                    seq, "chain", "push.received starts a run but names a cause", subject, run
                )
            return
        if not event.causation_id or not event.causation_hash:
            self._add(seq, "chain", f"{event.type} names no event it reacts to", subject, run)
            return
        cause = self._events.get(event.causation_id)
        if cause is None or cause[1] >= seq:
            self._add(
                seq,
                "missing",
                f"{event.type} reacts to event {event.causation_id}, which is not in the log "
                "before it (removed, or this event was altered)",
                subject,
                run,
            )
            return
        cause_run, cause_seq, cause_digest, cause_subject = cause
        if cause_run != run:
            self._add(
                seq,
                "chain",
                f"{event.type} of run {run} reacts to seq {cause_seq} of another run ({cause_run})",
                subject,
                run,
            )
        elif cause_digest.hex() != event.causation_hash:
            self._add(
                cause_seq,
                "altered",
                f"stored bytes do not match the hash that seq {seq} ({event.type}) recorded "
                f"for it: seq {cause_seq} was altered (or the causation_hash of seq {seq} was)",
                cause_subject,
                run,
            )

    def _close_checkpoint(self, checkpoint: Checkpoint, trusted: bool, seen_to: int) -> None:
        a, b = checkpoint.first_seq, checkpoint.last_seq
        if not trusted:
            # Its signature failed (reported already): what it claims proves nothing either way.
            self._range_known = False
            self._range_start = max(self._range_start, b + 1)
            return
        if a > self._range_start:
            self._add(
                a - 1,
                "checkpoint",
                f"no checkpoint in the list covers seq {self._range_start}..{a - 1} "
                "(one is missing from the list)",
                from_seq=self._range_start,
            )
        # Within a range the previous checkpoint's hash is the start, so a change is pinned to
        # its range; after a gap in the list only the hash from seq 1 can tell.
        contiguous = a == self._range_start and self._range_known
        recorded = bytes.fromhex(checkpoint.running_hash)
        if seen_to < b:
            self._add(
                seen_to + 1,
                "missing",
                f"seq {seen_to + 1}..{b} missing: the checkpoint of {checkpoint.time} covers up "
                f"to seq {b} but the log ends at {seen_to}",
            )
        elif recorded != (self._range if contiguous else self._running):
            self._add(
                b,
                "checkpoint",
                f"seq {a}..{b} no longer hash to the checkpoint of {checkpoint.time}: an "
                "event in that range was altered, removed or inserted since",
                from_seq=a,
            )
        self.report.checkpointed_to = max(self.report.checkpointed_to, b)
        self._range, self._range_known = recorded, True
        self._range_start = b + 1

    def finish(self, stream_last_seq: int | None = None) -> VerifyReport:
        """Close the remaining checkpoints and return the report, findings in log order."""
        seen_to = self.report.last_seq
        if stream_last_seq is not None and stream_last_seq > seen_to:
            self._add(
                seen_to + 1,
                "missing",
                f"seq {seen_to + 1}..{stream_last_seq} missing: "
                f"the stream says it ends at {stream_last_seq}",
            )
        for checkpoint, trusted in self._checkpoints[self._next_cp :]:
            self._close_checkpoint(checkpoint, trusted, seen_to)
        self._next_cp = len(self._checkpoints)
        self.report.runs = len(self._runs)
        self.report.findings = sorted(self._findings)[:MAX_FINDINGS]
        return self.report


def _is_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


async def verify_log(
    nc: Client,
    stream: str,
    *,
    checkpoints: Iterable[Checkpoint] = (),
    keys: dict[str, VerifyKey] | None = None,
    checkpoints_of: str | None = None,
) -> VerifyReport:
    """Check a whole stream: its settings, chain, sequence and checkpoints.

    `checkpoints_of` names the stream the checkpoints were made for, when verifying a copy.
    """
    info = await nc.jetstream().stream_info(stream)
    verifier = LogVerifier(stream, checkpoints, keys, checkpoints_of=checkpoints_of)
    config = info.config
    for flag in ("deny_delete", "deny_purge"):
        if not getattr(config, flag):
            verifier._add(0, "stream", f"stream {stream} has {flag} off: the API can remove events")
    head = info.state.last_seq
    async for chunk in scan(nc, stream, stop_seq=head):
        for record in chunk:
            verifier.feed(record)
    return verifier.finish(head)
