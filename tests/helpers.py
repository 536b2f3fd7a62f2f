"""Small helpers for tests: waiting on a condition, and needing a server or root."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

# CI sets CI=true (.ci/run exports it): there a missing server or privilege fails, never skips.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need(condition: object, reason: str) -> None:
    """Go on if `condition` holds; else skip the test saying `reason`, or under CI fail with it.

    For what a test needs from the machine (PostgreSQL, MariaDB, root for bwrap): a CI run
    cannot pass with those tests skipped. Not for Neo4j: no Neo4j server runs in CI, so its tests
    call pytest.skip themselves."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)", pytrace=False)
    pytest.skip(reason)


def requires(condition: object, reason: str) -> pytest.MarkDecorator:
    """need() as a marker, for `pytestmark` or a decorator; checked before the test's fixtures."""
    return pytest.mark.requires(bool(condition), reason)


def is_root() -> bool:
    """Whether the tests run as root (the bwrap sandbox's launcher needs it)."""
    return os.geteuid() == 0


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll an async predicate until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(interval)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """wait_until for a plain (not async) predicate, in threads or sync tests."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(interval)
