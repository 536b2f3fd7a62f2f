"""Start-up for every service: config, logging, the bus, its workers, a clean stop on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version

from secd_shared.bus import EventBus, connect
from secd_shared.config import Config, ConfigError, load_config
from secd_shared.events import TERMINAL_TYPES, Producer
from secd_shared.identities import CONSUMERS, IDENTITIES
from secd_shared.logs import configure_logging
from secd_shared.worker import Handler, Worker

__all__ = ["Handlers", "Setup", "producer_for", "run_service", "serve"]

log = logging.getLogger("secd.service")

# Given the config and the bus: {consumer name: handler}, or that and a clean-up to await at stop.
Handlers = dict[str, Handler]
Setup = Callable[
    [Config, EventBus], Awaitable[Handlers | tuple[Handlers, Callable[[], Awaitable[None]]]]
]


def producer_for(service: str) -> Producer:
    """This service's name and installed version, as written into every event it emits."""
    try:
        return Producer(service, version(f"secd-{service}"))
    except PackageNotFoundError:
        return Producer(service, "0+unknown")


async def serve(
    service: str, config: Config, setup: Setup, *, concurrency: int = 1, stop: asyncio.Event
) -> None:
    """Connect, run one worker per consumer until `stop`, then close everything."""
    nc = await connect(config.nats, service)
    bus = EventBus(nc, config.nats.stream)
    prepared = await setup(config, bus)
    handlers, cleanup = prepared if isinstance(prepared, tuple) else (prepared, None)
    producer = producer_for(service)
    workers = [
        Worker(
            bus,
            producer=producer,
            consumer=consumer,
            handler=handler,
            concurrency=concurrency,
            ack_wait_s=config.nats.ack_wait_s,
            max_deliver=config.nats.max_deliver,
            # Consumers of terminal events (revocation, publishing) react to a run that has
            # already ended: they never fail it a second time.
            fail_runs=not set(CONSUMERS[consumer]) <= set(TERMINAL_TYPES)
            # A service that may not write run.failed (the publisher's commit statuses) never
            # tries to: it gives up on the event instead.
            and "run.failed" in IDENTITIES[service].publishes,
        )
        for consumer, handler in handlers.items()
    ]
    log.info("%s %s started", service, producer.version)
    try:
        await asyncio.gather(*(worker.run(stop) for worker in workers))
    finally:
        if cleanup is not None:
            await cleanup()
        await bus.close()
        log.info("%s stopped", service)


def run_service(
    service: str, setup: Setup, *, concurrency: Callable[[Config], int] | None = None
) -> None:
    """The body of a service's `__main__`: exits 2 with one line on a bad config."""
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"secd-{service}: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(service, config.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            service,
            config,
            setup,
            concurrency=concurrency(config) if concurrency else 1,
            stop=stop,
        )

    asyncio.run(main())
