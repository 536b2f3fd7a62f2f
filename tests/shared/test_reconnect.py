"""Reconnect forever: a worker keeps working across a restart of the NATS server."""

from __future__ import annotations

import asyncio
import time

from secd.nats_server import free_port, start_nats, write_nats_config
from secd_shared.bus import EventBus, connect
from secd_shared.config import NatsConfig
from secd_shared.events import Producer, PushVerified, new_event, new_run_id
from secd_shared.identities import BOOTSTRAP_USER
from secd_shared.stream import ensure_consumers, ensure_stream
from secd_shared.worker import Worker
from tests.helpers import wait_until


def _verified(run_id: str):
    return new_event(
        PushVerified(
            repository="a/b", ref="refs/heads/main", head="a" * 40, commits=[],
            researcher="alice", keys=[],
        ),
        run_id=run_id, producer=Producer("verifier", "t"), actor="alice", project="a/b",
    )  # fmt: skip


async def test_a_worker_survives_a_server_restart(tmp_path):
    port = free_port()
    conf = tmp_path / "nats.conf"
    passwords = write_nats_config(conf, port=port, store_dir=tmp_path / "js")
    server = start_nats(conf, port, passwords)
    url = server.url

    def bus_config(name):
        return NatsConfig(url=url, user=name, password=passwords[name], connect_timeout_s=1)

    try:
        # connect() retries until the server is up, however late that is.
        admin = EventBus(await connect(bus_config(BOOTSTRAP_USER), BOOTSTRAP_USER))
        await ensure_stream(admin.js)
        await ensure_consumers(admin.js, ack_wait_s=2.0)
        bus = EventBus(await connect(bus_config("builder"), "builder"))
        seen: list[str] = []

        async def handle(stored):
            seen.append(stored.event.run_id)
            return []

        stop = asyncio.Event()
        worker = Worker(bus, producer=Producer("builder", "t"), consumer="builder", handler=handle)
        task = asyncio.create_task(worker.run(stop))
        first, second = new_run_id(), new_run_id()
        await admin.publish(_verified(first))
        await wait_until(lambda: _has(seen, first))

        server.stop()
        await asyncio.sleep(1.0)  # the worker's fetches fail meanwhile
        server = start_nats(conf, port, passwords)
        started = time.monotonic()
        while True:
            try:
                await admin.publish(_verified(second), timeout=1.0)
                break
            except Exception:
                assert time.monotonic() - started < 20, "the admin connection did not come back"
                await asyncio.sleep(0.2)
        await wait_until(lambda: _has(seen, second), timeout=20)
        stop.set()
        await task
        await bus.close()
        await admin.close()
    finally:
        server.stop()


async def _has(seen: list[str], run_id: str) -> bool:
    return run_id in seen
