"""The worker loop against a real NATS: publish-then-ack, retry, give up, fail the run."""

from __future__ import annotations

import asyncio

from secd_shared.events import (
    BuildSucceeded,
    Producer,
    PushVerified,
    RunFailed,
    RunPlan,
    RunSpec,
    new_event,
    new_run_id,
)
from secd_shared.worker import PermanentError, TransientError, Worker, skips_if
from tests.helpers import wait_until


def _verified(run_id: str):
    return new_event(
        PushVerified(
            repository="alice/m", ref="refs/heads/main", head="a" * 40, commits=["a" * 40],
            researcher="alice", keys=[],
        ),
        run_id=run_id, producer=Producer("verifier", "test"), actor="alice", project="alice/m",
    )  # fmt: skip


def _built() -> BuildSucceeded:
    plan = RunPlan(
        repository="alice/m", ref="refs/heads/main", head="a" * 40, commits=[], environment="e",
        spec=RunSpec(),
    )  # fmt: skip
    return BuildSucceeded(plan=plan, reused=False, build_log="", build_s=0.1)


ACK_WAIT_S = 2.0


async def _run_worker(nats_server, handler, until, *, max_deliver=3, linger_s=0.0):
    """Run the builder's consumer with `handler` until `until()` is truthy, then `linger_s`
    longer with the worker still running: a test that says "not delivered again" lingers past
    the ack wait, so a redelivery would reach the handler while the worker can still take it."""
    bus = await nats_server.bus("builder")
    stop = asyncio.Event()
    worker = Worker(
        bus, producer=Producer("builder", "test"), consumer="builder", handler=handler,
        ack_wait_s=ACK_WAIT_S, max_deliver=max_deliver,
    )  # fmt: skip
    task = asyncio.create_task(worker.run(stop))
    try:
        reached = await wait_until(until, timeout=30)
        await asyncio.sleep(linger_s)
        assert not task.done(), "the worker stopped before the test was over"
        return reached
    finally:
        stop.set()
        await task
        await bus.close()


async def test_the_next_event_is_published_chained_and_the_input_acked(nats_server, admin_bus):
    run_id = new_run_id()
    await admin_bus.publish(_verified(run_id))
    calls: list[str] = []

    async def handle(stored):
        if stored.event.run_id == run_id:
            calls.append(stored.event.type)
            return [_built()]
        return []

    async def done():
        return len(await admin_bus.read_run(run_id)) == 2

    # Acked: not delivered again after the ack wait (the worker still runs meanwhile).
    await _run_worker(nats_server, handle, done, linger_s=ACK_WAIT_S + 0.5)
    first, second = await admin_bus.read_run(run_id)
    assert second.event.type == "build.succeeded"
    assert second.event.causation_id == first.event.id
    from secd_shared.events import event_hash

    assert second.event.causation_hash == event_hash(first.data)
    assert second.event.actor == "alice" and second.event.producer.service == "builder"
    assert calls == ["push.verified"]


async def test_a_transient_fault_is_retried_then_succeeds(nats_server, admin_bus):
    run_id = new_run_id()
    await admin_bus.publish(_verified(run_id))
    attempts = 0

    async def handle(stored):
        nonlocal attempts
        if stored.event.run_id != run_id:
            return []
        attempts += 1
        if attempts == 1:
            raise TransientError("database down")
        return [_built()]

    async def done():
        return len(await admin_bus.read_run(run_id)) == 2

    await _run_worker(nats_server, handle, done)
    assert attempts == 2
    assert [s.event.type for s in await admin_bus.read_run(run_id)][-1] == "build.succeeded"


async def test_a_permanent_fault_fails_the_run_once_with_its_reason(nats_server, admin_bus):
    run_id = new_run_id()
    await admin_bus.publish(_verified(run_id))
    attempts = 0

    async def handle(stored):
        nonlocal attempts
        if stored.event.run_id != run_id:
            return []
        attempts += 1
        raise PermanentError("secd.yml: runfor must be a number", log_tail="tail")

    async def done():
        return len(await admin_bus.read_run(run_id)) == 2

    # Terminated: no redelivery after the ack wait (the worker still runs meanwhile).
    await _run_worker(nats_server, handle, done, linger_s=ACK_WAIT_S + 0.5)
    failed = (await admin_bus.read_run(run_id))[-1].event
    assert failed.type == "run.failed"
    assert failed.payload.reason == "secd.yml: runfor must be a number"
    assert failed.payload.stage == "builder" and failed.payload.log_tail == "tail"
    assert attempts == 1


async def test_redelivery_is_bounded_and_ends_in_run_failed(nats_server, admin_bus):
    run_id = new_run_id()
    await admin_bus.publish(_verified(run_id))
    attempts = 0

    async def handle(stored):
        if stored.event.run_id != run_id:
            return []
        nonlocal attempts
        attempts += 1
        raise RuntimeError("boom")

    async def done():
        return len(await admin_bus.read_run(run_id)) == 2

    await _run_worker(nats_server, handle, done, max_deliver=3)
    failed = (await admin_bus.read_run(run_id))[-1].event
    assert failed.type == "run.failed"
    assert "gave up after 3 attempts" in failed.payload.reason
    assert attempts == 3


async def test_skip_if_acks_a_run_that_already_has_the_event_without_calling_the_handler(
    nats_server, admin_bus
):
    common = {"producer": Producer("builder", "test"), "actor": "alice", "project": "alice/m"}
    done_run, open_run = new_run_id(), new_run_id()
    await admin_bus.publish(new_event(_built(), run_id=done_run, **common))
    failed = RunFailed(stage="credentials", reason="an earlier attempt")
    await admin_bus.publish(new_event(failed, run_id=done_run, **common))
    await admin_bus.publish(new_event(_built(), run_id=open_run, **common))
    calls: list[str] = []

    @skips_if("run.failed")
    async def handle(stored):
        if stored.event.run_id in (done_run, open_run):
            calls.append(stored.event.run_id)
        return []

    bus = await nats_server.bus("credentials")
    stop = asyncio.Event()
    worker = Worker(
        bus, producer=Producer("credentials", "test"), consumer="credentials", handler=handle,
        ack_wait_s=ACK_WAIT_S, max_deliver=3,
    )  # fmt: skip
    assert worker.skip_if == ("run.failed",)
    task = asyncio.create_task(worker.run(stop))
    try:
        # One at a time, in log order: when the open run is handled, the done one was delivered.
        async def reached_open_run():
            return open_run in calls

        await wait_until(reached_open_run, timeout=30)
        await asyncio.sleep(2.5)  # past the ack wait: neither comes back
        info = await admin_bus.js.consumer_info(bus.stream, "credentials")
    finally:
        stop.set()
        await task
        await bus.close()
    assert calls == [open_run]
    assert info.num_ack_pending == 0
    # Nothing was written for the skipped run.
    assert [s.event.type for s in await admin_bus.read_run(done_run)] == [
        "build.succeeded",
        "run.failed",
    ]


def test_an_explicit_skip_if_overrides_the_handlers_mark():
    @skips_if("run.failed")
    async def handle(stored):
        return []

    def worker(**options):
        return Worker(None, producer=Producer("x", "1"), consumer="x", handler=handle, **options)

    assert worker().skip_if == ("run.failed",)
    assert worker(skip_if=()).skip_if == ()
    assert worker(skip_if=["a", "b"]).skip_if == ("a", "b")
