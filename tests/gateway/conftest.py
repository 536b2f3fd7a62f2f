"""Fixtures of the gateway's tests: the officers' world (tests.gateway.reviewworld)."""

from __future__ import annotations

import httpx
import pytest

from secd_gateway.app import create_app
from tests.gateway.reviewworld import HeldRun, officer_config, write_held_run


@pytest.fixture
def officers_config(tmp_path):
    """Officers officer-1, officer-2 and alice (also a researcher), and mallory (no role)."""
    return officer_config(tmp_path / "officers")


@pytest.fixture
async def held(admin_bus) -> HeldRun:
    """A run of alice's with two held files, in the suite's log."""
    return await write_held_run(admin_bus)


@pytest.fixture
async def review_gateway(nats_server, admin_bus, officers_config):
    """The gateway app, in process, on the `gateway` identity's own connection."""
    bus = await nats_server.bus("gateway")
    app = create_app(officers_config, bus, "t" * 32)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        yield client
    await bus.close()
