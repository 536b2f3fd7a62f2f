"""The worker loop every service runs: pull an event, handle it, publish what follows, then ack.

Order matters for at-least-once delivery: the next event is published and acknowledged by the
server *before* the input is acked, so a crash anywhere leads to a redelivery, never a lost step;
and publishing is idempotent (see bus.py), so a redelivery never writes a second event.

- long work: `in_progress()` every third of the ack wait, so the server does not redeliver;
- a transient fault (TransientError, or any unexpected exception): `nak(delay)` with back-off;
- a permanent fault (PermanentError), or the last allowed delivery: `run.failed` with the reason,
  then `term()`;
- the connection: nats-py reconnects forever; a failed fetch is retried;
- a redelivery of work already done: with `skip_if` (or a handler marked `@skips_if(...)`), the
  worker reads the run first and acks without calling the handler when the run already holds one
  of those event types (the handler wrote its event, then crashed before the ack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
from nats.aio.msg import Msg

from secd_shared.bus import EventBus, StoredEvent
from secd_shared.events import AnyPayload, Event, EventDecodeError, Producer, RunFailed, new_event

__all__ = ["Emit", "Handler", "PermanentError", "TransientError", "Worker", "skips_if"]

log = logging.getLogger("secd.worker")


class PermanentError(Exception):
    """The run cannot succeed. `reason` is one line for the researcher; no retry."""

    def __init__(
        self,
        reason: str,
        *,
        log_tail: str = "",
        exit_code: int | None = None,
        outputs: str | None = None,
        log: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail
        self.exit_code = exit_code
        # Digests of the job's outputs and log (artifacts), when it ran.
        self.outputs = outputs
        self.log = log


class TransientError(Exception):
    """Something outside the run failed for now (a database down, a lock held); retry later."""


@dataclass(frozen=True)
class Emit:
    """A payload to publish, optionally as a different actor (the verifier names the researcher)."""

    payload: AnyPayload
    actor: str | None = None


Handler = Callable[[StoredEvent], Awaitable[Sequence[AnyPayload | Emit]]]
_H = TypeVar("_H", bound=Callable[..., Awaitable[Sequence[AnyPayload | Emit]]])


def skips_if(*event_types: str) -> Callable[[_H], _H]:
    """Mark a handler: a run that already holds one of `event_types` needs it no more.

    Every Worker built with the handler honours it (Worker's `skip_if` overrides it).
    """

    def mark(handler: _H) -> _H:
        handler.skip_if = event_types  # type: ignore[attr-defined]  # read back by Worker
        return handler

    return mark


class Worker:
    """One durable pull consumer, one handler, N events in flight."""

    def __init__(
        self,
        bus: EventBus,
        *,
        producer: Producer,
        consumer: str,
        handler: Handler,
        concurrency: int = 1,
        ack_wait_s: float = 60.0,
        max_deliver: int = 5,
        fail_runs: bool = True,
        skip_if: Sequence[str] | None = None,
    ) -> None:
        self.bus = bus
        self.producer = producer
        self.consumer = consumer
        self.handler = handler
        self.concurrency = concurrency
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.fail_runs = fail_runs
        # Event types that mean this handler's work for the run is done (see the module doc).
        self.skip_if: tuple[str, ...] = tuple(
            skip_if if skip_if is not None else getattr(handler, "skip_if", ())
        )
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Handle events until `stop` is set; then finish what is in flight."""
        psub = await self.bus.js.pull_subscribe_bind(self.consumer, stream=self.bus.stream)
        slots = asyncio.Semaphore(self.concurrency)
        log.info("consuming %s", self.consumer)
        while not stop.is_set():
            await slots.acquire()
            if stop.is_set():
                slots.release()
                break
            try:
                msgs = await psub.fetch(1, timeout=1.0)
            except nats.errors.TimeoutError:
                slots.release()
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.Error, OSError) as exc:
                slots.release()
                log.warning("fetch from %s failed (%s); retrying", self.consumer, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._deliver(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda _t: slots.release())
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, msg: Msg) -> None:
        stored = StoredEvent(seq=msg.metadata.sequence.stream, subject=msg.subject, data=msg.data)
        attempt = msg.metadata.num_delivered
        try:
            event = stored.event
        except EventDecodeError as exc:
            # Nothing we can do with it, and nobody to tell: keep it in the log, stop delivering.
            log.error("seq %d on %s is not a valid event: %s", stored.seq, msg.subject, exc)
            await msg.term()
            return
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            if await self.already_done(stored):
                log.info(
                    "%s: the run already has its %s; nothing to do",
                    event.type,
                    " or ".join(self.skip_if),
                    extra={"run_id": event.run_id, "attempt": attempt},
                )
                outputs: Sequence[AnyPayload | Emit] = ()
            else:
                outputs = await self.handler(stored)
            for output in outputs:
                await self.bus.publish(self._envelope(output, stored))
            await msg.ack_sync()
            log.info("handled %s", event.type, extra={"run_id": event.run_id, "attempt": attempt})
        except PermanentError as exc:
            await self._fail(msg, stored, exc)
        except Exception as exc:
            if attempt >= self.max_deliver:
                log.exception("giving up on %s after %d attempts", event.type, attempt)
                reason = (
                    f"{self.producer.service} gave up after {attempt} attempts: {_summary(exc)}"
                )
                await self._fail(msg, stored, PermanentError(reason))
            else:
                delay = min(2.0**attempt, 30.0)
                log.warning(
                    "%s failed (%s); retrying in %.0fs",
                    event.type,
                    _summary(exc),
                    delay,
                    extra={"run_id": event.run_id, "attempt": attempt},
                    exc_info=not isinstance(exc, TransientError),
                )
                with contextlib.suppress(Exception):
                    await msg.nak(delay=delay)
        finally:
            heartbeat.cancel()

    async def already_done(self, stored: StoredEvent) -> bool:
        """Whether the run of `stored` already holds one of the `skip_if` event types."""
        if not self.skip_if:
            return False
        run = await self.bus.read_run(stored.event.run_id)
        return any(s.event.type in self.skip_if for s in run)

    async def _fail(self, msg: Msg, stored: StoredEvent, exc: PermanentError) -> None:
        event = stored.event
        log.warning("run failed: %s", exc.reason, extra={"run_id": event.run_id})
        if self.fail_runs:
            failed = RunFailed(
                stage=self.producer.service,
                reason=exc.reason,
                log_tail=exc.log_tail,
                exit_code=exc.exit_code,
                outputs=exc.outputs,
                log=exc.log,
            )
            try:
                await self.bus.publish(self._envelope(failed, stored))
            except Exception:
                # Without run.failed in the log the run would hang: let the server redeliver.
                log.exception("could not record run.failed", extra={"run_id": event.run_id})
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2.0)
                return
        await msg.term()

    def _envelope(self, output: AnyPayload | Emit, cause: StoredEvent) -> Event:
        emit = output if isinstance(output, Emit) else Emit(output)
        event = cause.event
        return new_event(
            emit.payload,
            run_id=event.run_id,
            producer=self.producer,
            actor=emit.actor or event.actor,
            project=event.project,
            cause=event,
            cause_data=cause.data,
        )

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(self.ack_wait_s / 3, 0.5))
            with contextlib.suppress(Exception):
                await msg.in_progress()


def _summary(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
