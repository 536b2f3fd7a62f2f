"""The one door to NATS JetStream: connect, publish an event once, read the log back.

Publishing: every event goes to `secd.run.<run_id>.<type>` with `Nats-Msg-Id: <run_id>.<type>`
(or an id the caller gives, such as a push's) and an expected last subject sequence of 0, so a
retry of a handler never writes a second copy — neither inside the duplicate window (the server
answers `duplicate`) nor after it (the server refuses with 'wrong last sequence'). Reading uses
JetStream's batched direct get, which needs no consumer and no write permission of any kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from secd_shared.config import NatsConfig
from secd_shared.events import REPEATABLE_TYPES, Event, decode_event, encode_event, subject_for
from secd_shared.secret import reveal

__all__ = [
    "LOG_STREAM",
    "LOG_VIEW_STREAM",
    "EventBus",
    "StoredEvent",
    "connect",
    "log_subject",
    "log_view_subject",
]

# Job output: researcher data, kept apart from the audit log with a retention of its own.
LOG_STREAM = "SECD_LOGS"
# The job output the researcher may see: every line through the airlock's line checks first.
LOG_VIEW_STREAM = "SECD_LOGVIEW"


def log_subject(run_id: str) -> str:
    """The subject a run's job output is written to."""
    return f"secd.log.{run_id}"


def log_view_subject(run_id: str) -> str:
    """The subject a run's checked job output (the live log researchers follow) is written to."""
    return f"secd.logview.{run_id}"


log = logging.getLogger("secd.bus")

# JetStream error code for "wrong last sequence": the subject already holds the event.
_WRONG_LAST_SEQUENCE = 10071

# How long a write waits for its stream to have a leader. A JetStream cluster whose node leading
# the stream was killed answers nobody until it has elected another: 5 to 9 s with three nodes
# on the development machine (the election timeout is random).
LEADER_WAIT_S = 20.0


@dataclass(frozen=True)
class StoredEvent:
    """An event as the log holds it: its sequence, subject, server time and exact bytes."""

    seq: int
    subject: str
    data: bytes
    stored_at: datetime | None = None

    @cached_property
    def event(self) -> Event:
        """The decoded event (raises EventDecodeError for bytes that are not one)."""
        return decode_event(self.data)


async def connect(config: NatsConfig, name: str) -> Client:
    """Connect as this service's own identity; retry the first connect and reconnect forever."""
    user = config.user or name

    async def on_error(exc: Exception) -> None:
        # Permission violations arrive here, not at the caller (who only sees a timeout).
        log.error("nats: %s", exc)

    delay = 0.2
    while True:
        try:
            return await nats.connect(
                # A cluster's nodes, comma-separated (as the NATS tools take them).
                [url.strip() for url in config.url.split(",")],
                name=name,
                user=config.user,
                password=reveal(config.password),
                inbox_prefix=f"_INBOX_{user}",
                connect_timeout=config.connect_timeout_s,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                error_cb=on_error,
            )
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            log.warning("nats at %s not reachable (%s); retrying", config.url, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class EventBus:
    """Publish events once and read them back, over one NATS connection."""

    def __init__(self, nc: Client, stream: str = "SECD") -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.stream = stream

    async def publish(
        self, event: Event, *, msg_id: str | None = None, timeout: float = 5.0
    ) -> bytes:
        """Store an event; returns its bytes. Publishing it again is a no-op.

        `msg_id` replaces the default `Nats-Msg-Id` (`<run_id>.<type>`) where something else
        says which event this is, e.g. `push.<key>` for a push (see secd_shared.pushes).
        """
        data = encode_event(event)
        if event.type in REPEATABLE_TYPES:
            # Several per run: an id from the payload (or the writer's own) keeps a retry from
            # writing a second copy (within the stream's duplicate window).
            content = hashlib.sha256(msgspec.json.encode(event.payload)).hexdigest()[:32]
            headers = {"Nats-Msg-Id": msg_id or f"{event.run_id}.{event.type}.{content}"}
        else:
            headers = {
                "Nats-Msg-Id": msg_id or f"{event.run_id}.{event.type}",
                "Nats-Expected-Last-Subject-Sequence": "0",
            }
        subject = subject_for(event.run_id, event.type)
        try:
            ack = await self.store(subject, data, headers=headers, timeout=timeout)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                log.info("%s already in the log; not written again", subject)
                return data
            raise
        if ack.duplicate:
            log.info("%s already in the log (duplicate window); not written again", subject)
        return data

    async def store(
        self, subject: str, data: bytes, *, headers: dict[str, str], timeout: float = 5.0
    ) -> PubAck:
        """Publish to a stream and return its PubAck, waiting up to LEADER_WAIT_S for the stream
        to have a leader (then NoStreamResponseError), and sending once more after a timeout
        (a write in flight to a leader that died; a refused subject also looks like one).

        Sending again is safe because every write carries a Nats-Msg-Id and an expected last
        subject sequence: a copy that was stored is not stored twice.
        """
        deadline = time.monotonic() + LEADER_WAIT_S
        timed_out = False
        while True:
            try:
                return await self.js.publish(subject, data, headers=headers, timeout=timeout)
            except nats.js.errors.NoStreamResponseError:
                if time.monotonic() > deadline:
                    raise
                log.info("no leader for %s yet; trying again", subject)
                await asyncio.sleep(0.2)
            except nats.errors.TimeoutError:
                if timed_out:
                    raise
                timed_out = True

    async def read(
        self,
        subjects: str = "secd.run.>",
        *,
        start_seq: int = 1,
        batch: int = 512,
        stream: str | None = None,
    ) -> AsyncIterator[StoredEvent]:
        """Yield the stored messages on `subjects` from `start_seq`, in order (default: the log)."""
        seq = start_seq
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            while True:
                request = {"seq": seq, "next_by_subj": subjects, "batch": batch}
                await self.nc.publish(
                    f"$JS.API.DIRECT.GET.{stream or self.stream}",
                    json.dumps(request).encode(),
                    reply=inbox,
                )
                last = None
                pending = 0
                while True:
                    msg = await sub.next_msg(timeout=5.0)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status:
                        if status not in ("204", "404"):
                            raise RuntimeError(
                                f"reading the log failed: {status} {headers.get('Description', '')}"
                            )
                        break
                    last = int(headers["Nats-Sequence"])
                    pending = int(headers.get("Nats-Num-Pending", "0"))
                    yield StoredEvent(
                        seq=last,
                        subject=headers["Nats-Subject"],
                        data=msg.data,
                        stored_at=_parse_time(headers.get("Nats-Time-Stamp")),
                    )
                if last is None or pending == 0:
                    return
                seq = last + 1
        finally:
            await sub.unsubscribe()

    async def publish_log(self, run_id: str, chunk: bytes, *, timeout: float = 5.0) -> None:
        """Append a chunk of a job's output to the job-log stream (not the audit log)."""
        await self.js.publish(log_subject(run_id), chunk, timeout=timeout)

    async def last(self, subject: str, *, stream: str | None = None) -> bytes | None:
        """The data of the last message on `subject`, or None (direct get, read-only)."""
        request = json.dumps({"last_by_subj": subject}).encode()
        msg = await self.nc.request(
            f"$JS.API.DIRECT.GET.{stream or self.stream}", request, timeout=5.0
        )
        if (msg.headers or {}).get("Status"):
            return None
        return msg.data

    async def read_run(self, run_id: str) -> list[StoredEvent]:
        """Every event of one run, in log order."""
        return [stored async for stored in self.read(f"secd.run.{run_id}.>")]

    async def close(self) -> None:
        """Flush and close the connection (not drain: draining a pull subscription waits 30 s)."""
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            await self.nc.close()


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    # Nanoseconds do not fit datetime; keep microseconds.
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
