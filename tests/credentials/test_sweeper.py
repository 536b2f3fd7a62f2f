"""Leases that survive crashes: the sweeper compares the database's accounts with the log and
revokes what a crash, a lost event or a failed revocation left behind.

Real PostgreSQL, real NATS."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import asyncpg
import pytest

from secd_credentials.accounts import account_name
from secd_credentials.service import Credentials
from secd_shared.bus import StoredEvent
from secd_shared.config import (
    BuilderConfig,
    Config,
    CredentialsConfig,
    DatabaseConfig,
    IdentityConfig,
)
from secd_shared.events import (
    BuildSucceeded,
    Producer,
    RunFinished,
    RunPlan,
    RunSpec,
    new_event,
    new_run_id,
)
from secd_shared.sealing import generate_keypair
from secd_shared.worker import TransientError

ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@pytest.fixture(scope="module")
async def database():
    name = f"secdtest_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(database="postgres", **ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    conn = await asyncpg.connect(database=name, **ADMIN)
    await conn.execute("CREATE TABLE patients (id int)")
    await conn.close()
    yield name
    conn = await asyncpg.connect(database="postgres", **ADMIN)
    for (role,) in await conn.fetch(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", list(CREATED)
    ):
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await conn.close()


CREATED: set[str] = set()


async def _credentials(nats_server, tmp_path, database, *, grace_s=300.0, orphan_h=24.0):
    groups = tmp_path / "groups.toml"
    groups.write_text('[researchers]\nalice = ["postgres-patients-read"]\n')
    config = Config(
        state_dir=str(tmp_path),
        identity=IdentityConfig(groups_file=str(groups)),
        builder=BuilderConfig(max_runfor_h=orphan_h, timeout_s=0),
        credentials=CredentialsConfig(
            executor_public_key=generate_keypair(tmp_path / "executor.key"),
            default_database="sens",
            databases={"sens": DatabaseConfig(kind="postgres", database=database, user="postgres")},
            grace_s=grace_s,
        ),
    )
    return Credentials(config, await nats_server.bus("credentials"))


async def _issue(admin_bus, credentials, run_id) -> tuple[StoredEvent, str]:
    """A built run, issued through the service's own handler and written to the log."""
    producer = Producer("test", "1")
    plan = RunPlan(
        repository="alice/m", ref="refs/heads/main", head="a" * 40, commits=[], environment="e",
        spec=RunSpec(runfor=0.01),
    )  # fmt: skip
    built = new_event(
        BuildSucceeded(plan=plan, reused=True, build_log="", build_s=0.0),
        run_id=run_id, producer=producer, actor="alice", project="alice/m",
    )  # fmt: skip
    await admin_bus.publish(built)
    stored_built = (await admin_bus.read_run(run_id))[-1]
    (payload,) = await credentials.on_built(stored_built)
    await admin_bus.publish(
        new_event(payload, run_id=run_id, producer=producer, actor="alice", project="alice/m")
    )
    CREATED.add(payload.account)
    return stored_built, payload.account


async def _exists(database, account) -> bool:
    conn = await asyncpg.connect(database=database, **ADMIN)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", account))
    finally:
        await conn.close()


async def _types(admin_bus, run_id) -> list[str]:
    return [s.event.type for s in await admin_bus.read_run(run_id)]


async def test_an_account_whose_run_ended_unseen_is_revoked(
    nats_server, admin_bus, tmp_path, database
):
    credentials = await _credentials(nats_server, tmp_path, database)
    run_id = new_run_id()
    _built, account = await _issue(admin_bus, credentials, run_id)
    # The run ends while nobody revokes (the credentials service was down).
    await admin_bus.publish(
        new_event(
            RunFinished(exit_code=0, duration_s=1.0),
            run_id=run_id, producer=Producer("executor", "1"), actor="alice", project="alice/m",
        )
    )  # fmt: skip
    assert await _exists(database, account)
    # A fresh service (after a restart) has nothing in memory; its sweeper finds the account.
    restarted = await _credentials(nats_server, tmp_path, database)
    assert account in await restarted.sweep()
    assert not await _exists(database, account)
    assert (await _types(admin_bus, run_id))[-1] == "credentials.revoked"
    # Sweeping again finds nothing and writes nothing.
    assert account not in await restarted.sweep()
    assert (await _types(admin_bus, run_id)).count("credentials.revoked") == 1
    await credentials.close()
    await restarted.close()


async def test_an_expired_lease_is_revoked_even_while_the_run_goes_on(
    nats_server, admin_bus, tmp_path, database
):
    # runfor 0.01 h = 36 s; a grace of -40 s puts the lease's end in the past.
    credentials = await _credentials(nats_server, tmp_path, database, grace_s=-40)
    run_id = new_run_id()
    _built, account = await _issue(admin_bus, credentials, run_id)
    issued = (await admin_bus.read_run(run_id))[-1].event.payload
    assert issued.expires_at < datetime.now(UTC)
    assert account in await credentials.sweep()
    assert not await _exists(database, account)
    await credentials.close()


async def test_an_account_the_log_never_heard_of_is_revoked_once_old(
    nats_server, tmp_path, database
):
    # A crash between creating the account and writing credentials.issued.
    credentials = await _credentials(nats_server, tmp_path, database, orphan_h=0.0)
    account = account_name(new_run_id())
    backend = credentials.backends["sens"]
    await backend.issue(account, "x" * 40, ["patients"], expires_at=datetime.now(UTC))
    CREATED.add(account)
    # Young, it may be a run whose credentials.issued is being written right now: left alone.
    fresh = await _credentials(nats_server, tmp_path, database)  # 24 h before an orphan
    assert account not in await fresh.sweep()
    assert await _exists(database, account)
    assert account in await credentials.sweep()
    assert not await _exists(database, account)
    await credentials.close()
    await fresh.close()


class FailingRevokes:
    """Wraps the real backend; its first `failures` revocations raise (a database outage)."""

    def __init__(self, backend, failures: int) -> None:
        self.backend, self.failures = backend, failures
        self.kind = backend.kind

    async def revoke(self, account: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database unreachable")
        await self.backend.revoke(account)

    def __getattr__(self, name):
        return getattr(self.backend, name)


async def test_a_failed_revocation_is_reported_and_never_forgotten(
    nats_server, admin_bus, tmp_path, database
):
    credentials = await _credentials(nats_server, tmp_path, database)
    run_id = new_run_id()
    _built, account = await _issue(admin_bus, credentials, run_id)
    finished = new_event(
        RunFinished(exit_code=0, duration_s=1.0),
        run_id=run_id, producer=Producer("executor", "1"), actor="alice", project="alice/m",
    )  # fmt: skip
    await admin_bus.publish(finished)
    stored_finished = (await admin_bus.read_run(run_id))[-1]
    credentials.backends["sens"] = FailingRevokes(credentials.backends["sens"], failures=2)
    with pytest.raises(TransientError, match="sweeper retries"):
        await credentials.on_ended(stored_finished)
    failed = [
        s.event
        for s in await admin_bus.read_run(run_id)
        if s.event.type == "credentials.revoke_failed"
    ]
    assert failed and "database unreachable" in failed[0].payload.reason
    assert await _exists(database, account)
    assert account not in await credentials.sweep()  # still failing: kept, not forgotten
    assert account in await credentials.sweep()  # the database is back
    assert not await _exists(database, account)
    assert (await _types(admin_bus, run_id))[-1] == "credentials.revoked"
    await credentials.close()
