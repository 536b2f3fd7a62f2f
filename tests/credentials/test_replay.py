"""Neighbour replay on a real PostgreSQL: the replay account reads each granted table less a few
rows, through views, and nothing of it is left after revoke."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from secd_credentials.accounts import new_password, replay_account_name, run_id_of
from secd_credentials.backends import PostgresBackend
from secd_credentials.backends.postgres import hidden_schema
from secd_shared.events import new_run_id

from .conftest import DbEnv, pg_admin, pg_connect_as

AGES = 20  # rows of table ages (one-column primary key)
VISITS = 10  # rows of table visits (no primary key: rows named by ctid)
HIDE = 3


@pytest_asyncio.fixture(scope="module")
async def tables(pg_env: DbEnv) -> None:
    """Two more tables in the module's database: one with a primary key, one without."""
    conn = await pg_admin(pg_env.database)
    try:
        await conn.execute(
            "CREATE TABLE ages (id int PRIMARY KEY, age int NOT NULL);"
            "INSERT INTO ages SELECT i, 20 + i FROM generate_series(1, 20) AS i;"
            "CREATE TABLE visits (ward text, days int);"
            "INSERT INTO visits SELECT 'w' || i, i FROM generate_series(1, 10) AS i;"
        )
    finally:
        await conn.close()


def replay_account(pg_env: DbEnv) -> str:
    name = replay_account_name(new_run_id())
    pg_env.accounts.append(name)
    return name


async def schemas(database: str, account: str) -> list[str]:
    conn = await pg_admin(database)
    try:
        rows = await conn.fetch(
            "SELECT nspname::text AS name FROM pg_namespace WHERE nspname = ANY($1::text[])",
            [account, hidden_schema(account)],
        )
        return sorted(r["name"] for r in rows)
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def replay(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> AsyncIterator[tuple[str, str]]:
    account, password = replay_account(pg_env), new_password()
    result = await pg_backend.issue_replay(
        account,
        password,
        ["ages", "visits", "nosuch"],
        hide_rows=HIDE,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        statement_timeout_s=30,
    )
    assert result.granted == ["ages", "visits"]
    assert [r.name for r in result.refused] == ["nosuch"]
    yield account, password
    await pg_backend.revoke(account)


async def test_replay_account_sees_all_rows_but_a_few(
    replay: tuple[str, str], pg_env: DbEnv
) -> None:
    account, password = replay
    conn = await pg_connect_as(account, password, pg_env.database)
    try:
        # Unqualified names, as the job writes them, resolve to the views.
        assert await conn.fetchval("SELECT count(*) FROM ages") == AGES - HIDE
        assert await conn.fetchval("SELECT count(DISTINCT id) FROM ages") == AGES - HIDE
        assert await conn.fetchval("SELECT count(*) FROM visits") == VISITS - HIDE
        for sql in (
            "SELECT count(*) FROM public.ages",
            "SELECT count(*) FROM public.patients",
            f'SELECT count(*) FROM "{hidden_schema(account)}".ages',  # noqa: S608
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(sql)
        # The view's definition, which any role reads in pg_views, names no key.
        definition = await conn.fetchval(
            "SELECT definition FROM pg_views WHERE schemaname = $1 AND viewname = 'ages'", account
        )
        assert hidden_schema(account) in definition
        assert re.search(r"(?<!\w)\d", definition) is None, definition  # no number literal
    finally:
        await conn.close()


async def test_each_replay_leaves_out_its_own_rows(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    # Chosen at random per account: 5 issues all hiding the same 3 of 20 is a 1 in 10^9 event.
    admin = await pg_admin(pg_env.database)
    hidden: set[tuple[int, ...]] = set()
    try:
        for _ in range(5):
            account = replay_account(pg_env)
            await pg_backend.issue_replay(
                account,
                new_password(),
                ["ages"],
                hide_rows=HIDE,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
            keys = await admin.fetch(f'SELECT key FROM "{hidden_schema(account)}".ages')  # noqa: S608
            hidden.add(tuple(r["key"] for r in keys))
            await pg_backend.revoke(account)
    finally:
        await admin.close()
    assert all(len(keys) == HIDE for keys in hidden)
    assert len(hidden) > 1


async def test_revoke_drops_the_account_and_both_schemas(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    account = replay_account(pg_env)
    await pg_backend.issue_replay(
        account,
        new_password(),
        ["ages"],
        hide_rows=1,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    assert await schemas(pg_env.database, account) == sorted([account, hidden_schema(account)])
    assert account in await pg_backend.accounts()
    await pg_backend.revoke(account)
    assert await schemas(pg_env.database, account) == []
    assert account not in await pg_backend.accounts()
    admin = await pg_admin(pg_env.database)
    try:
        assert await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", account) is None
    finally:
        await admin.close()


async def test_a_schema_left_without_its_role_is_listed_and_dropped(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    account = replay_account(pg_env)
    admin = await pg_admin(pg_env.database)
    try:
        await admin.execute(f'CREATE SCHEMA "{account}"')
    finally:
        await admin.close()
    assert account in await pg_backend.accounts()
    assert run_id_of(account) == account.removeprefix("secd_").removesuffix("_n")
    await pg_backend.revoke(account)
    assert await schemas(pg_env.database, account) == []


async def test_replay_needs_a_replay_account_name(
    pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    with pytest.raises(ValueError, match="not a replay account"):
        await pg_backend.issue_replay(
            pg_env.new_account(),
            new_password(),
            ["patients"],
            hide_rows=1,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
