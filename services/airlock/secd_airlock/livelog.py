"""The live log: every line a job prints passes `check_line` before a researcher can follow it.

The executor ships the job's output to `secd.log.<run>` (stream SECD_LOGS, which only the
airlock reads); this copies each chunk to `secd.logview.<run>` (SECD_LOGVIEW, which the gateway
serves to `secd logs -f`), with every line that matches the granted tables, holds an identity
number or looks encoded replaced by a marker naming the check. Officers keep the raw log.

One durable consumer, handled in order; the copy of a chunk carries the chunk's sequence as its
message id, so a redelivery does not write it twice. A line cut between two chunks is checked
in its two parts (the job log as a whole is checked again when the run ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

import nats.errors

from secd_airlock.checks import Rules, SourceIndex, check_line, marker
from secd_airlock.checks.canaries import Canaries
from secd_airlock.sources import SourceError, Sources
from secd_shared.bus import LOG_STREAM, EventBus, log_view_subject
from secd_shared.events import CredentialsIssued
from secd_shared.identities import LOG_CONSUMERS

log = logging.getLogger("secd.airlock")

__all__ = ["LiveLog", "filter_chunk"]

CONSUMER = next(iter(LOG_CONSUMERS))


def filter_chunk(
    chunk: bytes, index: SourceIndex, rules: Rules, canaries: Canaries | None = None
) -> tuple[bytes, int]:
    """The chunk as the researcher may see it, and how many lines were withheld (a line with a
    value of the run's `canaries` too)."""
    text = chunk.decode("utf-8", "replace")
    out, withheld = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body) :]
        found = check_line(body, index, rules, canaries) if body.strip() else None
        if found is None:
            out.append(line)
        else:
            withheld += 1
            out.append(marker(found.check) + (end or ""))
    return "".join(out).encode(), withheld


class LiveLog:
    """Copies each run's job output to its checked live log."""

    def __init__(
        self,
        bus: EventBus,
        sources: Sources,
        rules: Rules,
        *,
        keep: int = 64,
        canaries_key: bytes | None = None,
        canary_rows: int = 0,
    ) -> None:
        self.bus = bus
        self.sources = sources
        self.rules = rules
        self.keep = keep
        self.canaries_key = canaries_key
        self.canary_rows = canary_rows
        self._indexes: OrderedDict[str, SourceIndex] = OrderedDict()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def index_for(self, run_id: str) -> SourceIndex:
        """The run's granted tables' index (kept while the run prints)."""
        found = self._indexes.get(run_id)
        if found is not None:
            self._indexes.move_to_end(run_id)
            return found
        run = await self.bus.read_run(run_id)
        issued = next(
            (s.event.payload for s in run if isinstance(s.event.payload, CredentialsIssued)), None
        )
        if issued is None or not issued.granted or not self.sources.covers(issued.database):
            index = SourceIndex.build(b"none", [], self.rules)
        else:
            index = await self.sources.index(issued.database, issued.granted)
        self._indexes[run_id] = index
        while len(self._indexes) > self.keep:
            self._indexes.popitem(last=False)
        return index

    async def handle(self, subject: str, data: bytes, seq: int) -> None:
        run_id = subject.rsplit(".", 1)[-1]
        index = await self.index_for(run_id)
        canaries = (
            Canaries.for_run(self.canaries_key, run_id, self.canary_rows)
            if self.canaries_key and self.canary_rows > 0
            else None
        )
        shown, withheld = await asyncio.to_thread(filter_chunk, data, index, self.rules, canaries)
        if withheld:
            log.warning("withheld %d lines of the live log", withheld, extra={"run_id": run_id})
        await self.bus.store(
            log_view_subject(run_id), shown, headers={"Nats-Msg-Id": f"{run_id}.{seq}"}
        )

    async def run(self) -> None:
        psub = await self.bus.js.pull_subscribe_bind(CONSUMER, stream=LOG_STREAM)
        while not self._stop.is_set():
            try:
                msgs = await psub.fetch(16, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, OSError) as exc:
                log.warning("fetching job output failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    await self.handle(msg.subject, msg.data, msg.metadata.sequence.stream)
                    await msg.ack()
                except (SourceError, nats.errors.Error, OSError) as exc:
                    log.warning("live log: %s; trying again", exc)
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
                except Exception:
                    # Nothing unchecked is shown: the chunk stays out of the live log.
                    log.exception("live log: a chunk could not be checked; it is not shown")
                    with contextlib.suppress(Exception):
                        await msg.term()
