"""The gateway's read model: every run's folded view, kept in memory from the log.

`GET /runs` and `GET /runs/{run_id}` read this instead of the log. Each gateway process keeps
its own: at start it reads the whole log (`logscan.scan`, the fast batched direct get), then
folds each new event into its run's view (`secd_shared.runs.fold_event`) and keeps the runs in
order (newest first, overall and per researcher), so a listing reads `limit` views and scans
nothing.

Nothing lags: before answering, a request folds whatever the log holds beyond the last
sequence the view has folded (one direct-get request; the server answers at once when there is
nothing new), so every event stored before the request arrived is shown. On a JetStream
cluster a follower replica may answer that request a few milliseconds behind the leader; a run
the view does not hold is therefore looked for again up to the leader's last sequence before
the answer is "no such run". The log's sequences are the view's only cursor; the projection
needs no consumer, no bucket and no right the gateway did not already have (direct get and
stream info on SECD), keeps no state on the server, and a reconnect or a NATS restart needs
nothing from it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import json
import logging
import time
from dataclasses import dataclass

import msgspec

from secd_shared.bus import EventBus
from secd_shared.events import EventDecodeError, decode_event
from secd_shared.logscan import Record, scan
from secd_shared.runs import RunView, fold_event, fold_run

__all__ = ["FOLLOW_S", "LEADER_WAIT_S", "LOAD_WAIT_S", "ProjectionLoading", "RunProjection"]

log = logging.getLogger("secd.gateway")

# How long a listing waits for the initial read of the log before it answers 503.
LOAD_WAIT_S = 5.0
# How often a served gateway folds new events without being asked, so that a request after a
# quiet spell has little to fold.
FOLLOW_S = 1.0
# How long one read of the log may wait for the server.
_READ_WAIT_S = 5.0
# How long a run the view lacks is looked for, up to the leader's last sequence.
LEADER_WAIT_S = 1.0


class ProjectionLoading(RuntimeError):
    """The gateway is still reading the log for the first time; the message says how far."""


@dataclass(slots=True)
class _Run:
    view: RunView
    # Where the run sits in the listings: (created, run id), newest last.
    key: tuple[float, str]


class RunProjection:
    """Every run's view, folded from the log, and the runs newest first (overall, per researcher).

    Safe to share between concurrent requests: reads of the log are serialised and coalesced,
    so requests that arrive while one read is under way are all served by the next.
    """

    def __init__(self, bus: EventBus, *, subjects: str = "secd.run.>") -> None:
        """A projection of `bus`'s log; nothing is read until `start` or the first request."""
        self.bus = bus
        self.subjects = subjects
        # The last stream sequence folded: the next read starts after it.
        self.seq = 0
        self._runs: dict[str, _Run] = {}
        self._newest: list[tuple[float, str]] = []
        self._by_researcher: dict[str, list[tuple[float, str]]] = {}
        self._lock = asyncio.Lock()
        self._asked = 0
        self._covered = 0
        self._loaded = asyncio.Event()
        self._loader: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """How many runs the view holds."""
        return len(self._runs)

    @property
    def loaded(self) -> bool:
        """Whether the first read of the whole log is done."""
        return self._loaded.is_set()

    def start(self) -> None:
        """Start the first read of the log in the background (again, if an earlier one failed)."""
        if self._loader is None or (self._loader.done() and not self.loaded):
            self._loader = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:
            # Tried again by the next request (or the follower); until then runs are read
            # from the log one by one and listings wait.
            log.warning("reading the log for the runs view failed: %s", exc)
            return
        self._loaded.set()
        log.info("runs projected from the log", extra={"runs": len(self._runs), "seq": self.seq})

    async def follow(self, every_s: float = FOLLOW_S) -> None:
        """Read the log at start, then fold new events every `every_s` seconds, until cancelled."""
        self.start()
        failing = False
        while True:
            await asyncio.sleep(every_s)
            if not self.loaded:
                self.start()
                continue
            try:
                await self.refresh()
                failing = False
            except Exception as exc:
                # Requests read the log themselves before answering; this only keeps them quick.
                if not failing:
                    log.warning("reading new events for the runs view failed: %s", exc)
                failing = True

    async def close(self) -> None:
        """Stop the first read if it is still going."""
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader

    async def refresh(self) -> None:
        """Fold every event the log holds beyond the view's last sequence.

        When this returns, every event stored before it was called is in the view.
        """
        self._asked += 1
        ticket = self._asked
        async with self._lock:
            # A read that started after this call was made has covered it.
            if self._covered >= ticket:
                return
            covered = self._asked
            async for chunk in scan(
                self.bus.nc,
                self.bus.stream,
                self.subjects,
                start_seq=self.seq + 1,
                wait_s=_READ_WAIT_S,
            ):
                for record in chunk:
                    self._fold(record)
            self._covered = covered

    def _fold(self, record: Record) -> None:
        self.seq = record.seq
        try:
            event = decode_event(record.data)
        except EventDecodeError as exc:
            # `secd audit verify` reports such messages; the runs view leaves them out.
            log.warning("log message %d is not an event, left out of the runs view: %s",
                        record.seq, exc)  # fmt: skip
            return
        run = self._runs.get(event.run_id)
        if run is None:
            view = RunView(run_id=event.run_id)
            fold_event(view, event)
            run = _Run(view, (event.time.timestamp(), event.run_id))
            self._runs[event.run_id] = run
            bisect.insort(self._newest, run.key)
            bisect.insort(self._by_researcher.setdefault(view.actor, []), run.key)
            return
        actor = run.view.actor
        fold_event(run.view, event)
        if run.view.actor != actor:
            # From push.verified on, the actor is the researcher the pushing account maps to.
            self._unlist(actor, run.key)
            bisect.insort(self._by_researcher.setdefault(run.view.actor, []), run.key)

    def _unlist(self, researcher: str, key: tuple[float, str]) -> None:
        keys = self._by_researcher[researcher]
        del keys[bisect.bisect_left(keys, key)]
        if not keys:
            del self._by_researcher[researcher]

    async def listing(
        self, limit: int, researcher: str | None = None, *, wait_s: float = LOAD_WAIT_S
    ) -> bytes:
        """`{"runs": [...]}` as JSON: the newest `limit` runs (of `researcher`), newest first.

        Raises ProjectionLoading if the first read of the log takes longer than `wait_s`.
        """
        self.start()
        if not self.loaded:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), wait_s)
            if not self.loaded:
                raise ProjectionLoading(
                    f"the gateway is still reading the log ({len(self._runs)} runs, up to "
                    f"event {self.seq} so far); try again in a few seconds"
                )
        await self.refresh()
        keys = self._by_researcher.get(researcher, []) if researcher else self._newest
        views = [self._runs[run_id].view.as_dict() for _, run_id in reversed(keys[-limit:])]
        return msgspec.json.encode({"runs": views})

    async def view(self, run_id: str) -> RunView | None:
        """The run's view as of now, or None if the log has no event of it.

        Until the first read of the log is done, the run is read from the log and folded on
        the spot (the answer is the same, only slower). The view returned is the caller's own.
        """
        self.start()
        if not self.loaded:
            stored = await self.bus.read_run(run_id)
            events = []
            for s in stored:
                with contextlib.suppress(EventDecodeError):
                    events.append(s.event)
            return fold_run(run_id, events) if events else None
        await self.refresh()
        run = self._runs.get(run_id)
        if run is None:
            await self._reach_leader()
            run = self._runs.get(run_id)
        return copy.copy(run.view) if run else None

    async def _reach_leader(self) -> None:
        """Fold up to the stream leader's last sequence, for at most LEADER_WAIT_S.

        A direct get may be answered by any replica of a clustered stream, and a follower can
        be a little behind the leader; the stream's info comes from the leader.
        """
        try:
            reply = await self.bus.nc.request(
                f"$JS.API.STREAM.INFO.{self.bus.stream}", b"", timeout=LEADER_WAIT_S
            )
            last = json.loads(reply.data)["state"]["last_seq"]
        except Exception:
            # No leader (a failover under way) or no answer: what the replicas said stands.
            return
        deadline = time.monotonic() + LEADER_WAIT_S
        while self.seq < last and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            await self.refresh()
