"""Reading the log fast, read-only: batched direct get, handed over a batch at a time.

`EventBus.read` yields one `StoredEvent` at a time through nats-py's general message path, which
parses every header line of every message into a dict (about eight per stored event) and wakes a
task per message: it tops out near 20,000 events/s. Audits, verification and the checkpointer
read the whole log, so they read through `scan`, which asks for large batches and takes each
message's sequence and subject straight from the raw header block: about five times faster.

It needs no consumer and no write permission: only `$JS.API.DIRECT.GET.<stream>` (the `auditor`
and `checkpointer` identities have it). Events are handed over as raw bytes (`Record`); decode
them with `decode_event`, or with `decode_header` when the envelope is all a filter needs.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import Struct
from nats.aio.client import Client
from nats.aio.msg import Msg

from secd_shared.events import EventDecodeError

__all__ = ["EventHeader", "LogReadError", "Record", "decode_header", "scan"]

# A batch this size keeps the server busy while the client parses; its bytes stay bounded
# (1 MiB per event at most, the server's max_payload, but events are ~1 KiB).
DEFAULT_BATCH = 10_000
# How many records are handed over at once while a batch is still arriving.
_HANDOVER = 256


class Record(Struct, frozen=True, array_like=True):
    """One stored message: its stream sequence, its subject and its exact bytes."""

    seq: int
    subject: str
    data: bytes


class EventHeader(Struct, frozen=True, kw_only=True):
    """An event's envelope without its payload: enough to filter and to check the chain."""

    id: str
    run_id: str
    type: str
    time: datetime
    actor: str
    project: str
    causation_id: str | None = None
    causation_hash: str | None = None


_header_decoder = msgspec.json.Decoder(EventHeader)


def decode_header(data: bytes) -> EventHeader:
    """The envelope of stored event bytes (the payload is skipped, not checked)."""
    try:
        return _header_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise EventDecodeError(f"not a secd event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None


class LogReadError(RuntimeError):
    """The log could not be read; the message says which stream and what to check."""


# Per connection: subscription id -> the raw handler of a scan in progress.
_routes: weakref.WeakKeyDictionary[Client, dict[int, Callable[[bytes, bytes], None]]] = (
    weakref.WeakKeyDictionary()
)


def _route(nc: Client) -> dict[int, Callable[[bytes, bytes], None]]:
    """Divert a scan's replies before nats-py parses their headers; others go on as before."""
    routes = _routes.get(nc)
    if routes is not None:
        return routes
    routes = _routes[nc] = {}
    original = getattr(nc, "_process_msg", None)
    if original is None:
        # Another nats-py: every reply takes the subscription callback (slower, same result).
        return routes

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = routes.get(sid)
        if handler is None:
            await original(sid, subject, reply, data, headers)
            return
        handler(headers or b"", data)

    # Replacing nats-py's private per-message hook on this one connection is the point here.
    nc._process_msg = process_msg  # type: ignore[method-assign]
    return routes


def _header(block: bytes, name: bytes) -> bytes | None:
    # The server appends its own headers after the ones stored with the message, so the last
    # occurrence is the server's even if a publisher stored a header of the same name.
    at = block.rfind(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    return block[start : block.find(b"\r\n", start)].strip()


class _Batches:
    """Collects the replies to one direct-get batch request at a time."""

    def __init__(self) -> None:
        self.chunk: list[Record] = []
        self.end: tuple[str, int | None, str] | None = None
        self.ready = asyncio.Event()

    def on_raw(self, block: bytes, data: bytes) -> None:
        if block[8:9] == b" ":
            # A status line ("NATS/1.0 204 EOB"): the batch is over, or the request failed.
            status, _, description = block[9:].split(b"\r\n", 1)[0].partition(b" ")
            pending = _header(block, b"Nats-Num-Pending")
            self.end = (
                status.decode(),
                int(pending) if pending else None,
                description.decode("utf-8", "replace").strip(),
            )
            self.ready.set()
            return
        # The server writes Nats-Subject and then Nats-Sequence: read both in one pass.
        at = block.rfind(b"\r\nNats-Subject:")
        if at < 0:
            return
        end = block.find(b"\r\n", at + 15)
        subject = block[at + 15 : end]
        seq: bytes | None
        if block.startswith(b"\r\nNats-Sequence:", end):
            seq = block[end + 16 : block.find(b"\r\n", end + 16)]
        else:
            seq = _header(block, b"Nats-Sequence")
            if seq is None:
                return
        self.chunk.append(Record(int(seq), subject.strip().decode(), data))
        if len(self.chunk) >= _HANDOVER:
            self.ready.set()

    async def on_msg(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status:
            pending = headers.get("Nats-Num-Pending")
            self.end = (status, int(pending) if pending else None, headers.get("Description", ""))
            self.ready.set()
            return
        self.chunk.append(Record(int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg.data))
        if len(self.chunk) >= _HANDOVER:
            self.ready.set()


async def scan(
    nc: Client,
    stream: str,
    subjects: str = ">",
    *,
    start_seq: int = 1,
    start_time: datetime | None = None,
    stop_seq: int | None = None,
    batch: int = DEFAULT_BATCH,
    wait_s: float = 10.0,
    fast: bool = True,
) -> AsyncIterator[list[Record]]:
    """Yield the stored messages on `subjects` in log order, a list at a time.

    `start_time` (instead of `start_seq`) starts at the first message stored at or after it;
    `stop_seq` ends the scan after that sequence. `fast=False` takes nats-py's own header
    parsing (the tests compare the two).
    """
    collector = _Batches()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collector.on_msg)
    routes = _route(nc) if fast else {}
    routes[sub._id] = collector.on_raw
    seq = start_seq
    try:
        while True:
            request: dict[str, Any] = {"batch": batch, "next_by_subj": subjects}
            if start_time is not None:
                # Only the first request seeks by time; the next ones go on from a sequence.
                request["start_time"] = start_time.astimezone(UTC).isoformat()
                start_time = None
            else:
                request["seq"] = seq
            collector.end = None
            collector.ready.clear()
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            last = None
            count = 0
            while True:
                try:
                    await asyncio.wait_for(collector.ready.wait(), wait_s)
                except TimeoutError:
                    raise LogReadError(
                        f"stream {stream} did not answer within {wait_s:.0f} s; check that it "
                        "exists and that this identity may read it (direct get)"
                    ) from None
                collector.ready.clear()
                chunk, collector.chunk = collector.chunk, []
                if chunk:
                    last = chunk[-1].seq
                    count += len(chunk)
                    if stop_seq is not None and last >= stop_seq:
                        chunk = [r for r in chunk if r.seq <= stop_seq]
                        if chunk:
                            yield chunk
                        return
                    yield chunk
                if collector.end is not None and not collector.chunk:
                    break
            status, pending, description = collector.end
            if status == "404":
                return
            if status != "204":
                raise LogReadError(
                    f"reading stream {stream} failed: {status} {description}".strip()
                    + ("; does the stream exist?" if status == "503" else "")
                )
            # The end-of-batch status says how many matching messages remain; without it (an
            # older server), a short batch means the end.
            if last is None or pending == 0 or (pending is None and count < batch):
                return
            seq = last + 1
    finally:
        routes.pop(sub._id, None)
        await sub.unsubscribe()
