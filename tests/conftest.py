"""Fixtures shared by the whole suite: a private NATS server with secd's per-service users."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secd import nats_server
from secd.nats_server import free_port, start_nats, write_nats_config
from secd_shared.bus import EventBus, connect
from secd_shared.config import NatsConfig
from secd_shared.identities import BOOTSTRAP_USER
from secd_shared.stream import ensure_consumers, ensure_log_stream, ensure_stream
from tests.helpers import need

# Fixtures that tests of several packages use, kept in modules of their own: the forge and identity
# worlds (contracts, verifier) and the audit tests' own NATS server (secd, shared, checkpointer).
pytest_plugins = ("tests.forgeworld", "tests.auditlog")


def pytest_configure(config: pytest.Config) -> None:
    """Register the `requires` marker (tests.helpers.requires)."""
    config.addinivalue_line(
        "markers", "requires(condition, reason): skip unless condition, or fail under CI=true"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply `requires` markers before any fixture is set up: skip, or under CI fail."""
    for mark in item.iter_markers("requires"):
        need(*mark.args)


@dataclass
class NatsServer(nats_server.NatsServer):
    """secd's nats-server, with helpers to connect as any of its identities."""

    def config_for(self, identity: str) -> NatsConfig:
        """How `identity` connects (ack wait short, so redelivery tests are quick)."""
        return NatsConfig(
            url=self.url, user=identity, password=self.passwords[identity], ack_wait_s=2.0
        )

    async def bus(self, identity: str) -> EventBus:
        """A connected EventBus as `identity`."""
        return EventBus(await connect(self.config_for(identity), identity))


def start_test_nats(root: Path, passwords: dict[str, str] | None = None) -> NatsServer:
    """A nats-server with secd's users, its config and JetStream store under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = root / "nats.conf"
    passwords = write_nats_config(conf, port=port, store_dir=root / "js", passwords=passwords)
    server = start_nats(conf, port, passwords)
    return NatsServer(server.url, server.port, server.passwords, server.process)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> NatsServer:
    """One NATS server for the session (each test uses its own stream or run ids)."""
    server = start_test_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def admin_bus(nats_server) -> AsyncIterator[EventBus]:
    """The bootstrap identity, with the SECD stream and every consumer created."""
    bus = await nats_server.bus(BOOTSTRAP_USER)
    await ensure_stream(bus.js)
    await ensure_consumers(bus.js, ack_wait_s=2.0, max_deliver=3)
    await ensure_log_stream(bus.js)
    yield bus
    await bus.close()
