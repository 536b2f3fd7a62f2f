"""The run's progress as the commit status of the pushed head: every event -> pending, running,
success or failed, with one line saying where the run is or why it stopped.

Why here: the publisher already writes to the forge (results branches), so it holds the forge
credentials and sits in the forge's network segment; a status consumer of its own (durable
`publisher-status`) reacts to every stage without slowing down publishing. It publishes no
events and cannot fail a run: a status the forge will not take is retried, then dropped.

Each event sets the status the run had reached with it (the log up to that event), so every
stage shows; an event handled after the run has ended (a late redelivery) sets nothing, so a
finished run never goes back to running.

No status at all is set for a push whose pusher is no researcher secd knows: not `pending`
before the verifier has decided (secd_shared.pushes.researcher_of, the verifier's own rule,
answers that from the push alone), and nothing after it rejected the push for that reason.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Mapping

from secd_shared.bus import EventBus, StoredEvent
from secd_shared.events import TERMINAL_TYPES, AnyPayload, Event, PushReceived
from secd_shared.pushes import UnknownPusher, researcher_of
from secd_shared.runs import fold_run
from secd_shared.worker import TransientError

from .forge_port import CommitStatus, ForgeUnavailable, ResultsForge

__all__ = ["StatusReporter", "status_for"]

log = logging.getLogger("secd.publisher.status")

_RUNNING = {
    "push.verified": "{n} commit(s) verified; building the environment",
    "build.succeeded": "environment ready; granting database access",
    "credentials.issued": "database access granted; starting the job",
    "run.started": "running in the sandbox",
}


def _short_reason(reason: str) -> str:
    # "commit 3f2a1c9 is not signed; ..." reads as "3f2a1c9 is not signed; ..." after "rejected:".
    return reason.removeprefix("commit ")


def status_for(events: list[Event], results_prefix: str) -> CommitStatus | None:
    """The commit status a run's events (in log order) amount to; None before push.received."""
    if not events or not any(e.type == "push.received" for e in events):
        return None
    view = fold_run(events[0].run_id, events)
    types = {e.type for e in events}
    branch = view.branch or f"{results_prefix}{view.run_id}"
    if "run.rejected" in types:
        return CommitStatus("failed", f"rejected: {_short_reason(view.reason or '')}")
    if "run.failed" in types:
        failed = next(e.payload for e in events if e.type == "run.failed")
        stage = getattr(failed, "stage", "")
        results = f"; details on branch {branch}" if "results.published" in types else ""
        return CommitStatus("failed", f"failed ({stage}): {view.reason}{results}")
    if "run.finished" in types:
        where = f"results on branch {branch}"
        if view.exit_code == 0:
            return CommitStatus("success", f"finished; {where}")
        return CommitStatus("failed", f"the job exited with code {view.exit_code}; {where}")
    for event_type in ("run.started", "credentials.issued", "build.succeeded", "push.verified"):
        if event_type in types:
            return CommitStatus("running", _RUNNING[event_type].format(n=len(view.commits)))
    return CommitStatus("pending", "verifying the signatures of the pushed commits")


class StatusReporter:
    """The `publisher-status` consumer: sets the forge's commit status at every stage."""

    def __init__(
        self,
        bus: EventBus,
        forge: ResultsForge,
        results_prefix: str,
        *,
        accounts: Mapping[str, str] | None = None,
    ) -> None:
        """Read runs from `bus`, write statuses to `forge`; `accounts` is forge.accounts."""
        self.bus = bus
        self.forge = forge
        self.results_prefix = results_prefix
        self.accounts = dict(accounts or {})
        # Events of one run are handled one at a time: read the log, then write, in order.
        self._locks = [asyncio.Lock() for _ in range(64)]
        # The last status written per run (bounded): an unchanged one is not sent again.
        self._written: dict[str, CommitStatus] = {}

    async def on_event(self, stored: StoredEvent) -> list[AnyPayload]:
        """Set the status the run has reached; publishes nothing."""
        run_id = stored.event.run_id
        async with self._locks[zlib.crc32(run_id.encode()) % len(self._locks)]:
            run = await self.bus.read_run(run_id)
            events = [s.event for s in run if s.seq <= stored.seq]
            push = next((e.payload for e in events if e.type == "push.received"), None)
            status = status_for(events, self.results_prefix)
            if not isinstance(push, PushReceived) or status is None:
                return []
            if not self._pusher_known(push, [s.event for s in run]):
                return []
            ended = not any(e.type in TERMINAL_TYPES for e in events) and any(
                s.event.type in TERMINAL_TYPES for s in run
            )
            if ended or self._written.get(run_id) == status:
                return []
            try:
                await asyncio.to_thread(self.forge.set_status, push, status)
            except ForgeUnavailable as exc:
                raise TransientError(str(exc)) from None
            self._written[run_id] = status
            if len(self._written) > 4096:
                self._written.pop(next(iter(self._written)))
        log.info("status %s: %s", status.state, status.description, extra={"run_id": run_id})
        return []

    def _pusher_known(self, push: PushReceived, run: list[Event]) -> bool:
        """Whether the run may have a status: the verifier's verdict, else the same rule."""
        for event in run:
            if event.type == "push.verified":
                return True
            if event.type == "run.rejected":
                return not getattr(event.payload, "unknown_pusher", False)
        try:
            researcher_of(push, self.accounts)
        except UnknownPusher:
            log.info("no status for %s: the pusher is no researcher secd knows", push.after[:12])
            return False
        return True
