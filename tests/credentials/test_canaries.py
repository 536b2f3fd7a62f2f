"""Canary rows on a real PostgreSQL: a run's account reads each granted table with the run's
synthetic patients added (the ones the airlock derives for that run id), through views, never the
table itself; a table with no column a canary can fill gets none; revoke leaves nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from secd_airlock.checks.canaries import Canaries
from secd_credentials.accounts import account_name, new_password, replay_account_name
from secd_credentials.backends import CanaryBackend, PostgresBackend
from secd_credentials.backends.postgres import canaries_schema, hidden_schema, quote_ident
from secd_shared.canaries import canary_key, canary_rows
from secd_shared.events import new_run_id

from .conftest import DbEnv, pg_admin, pg_connect_as

KEY = canary_key(b"site-canary-key-0123456789abcdef0123")
PEOPLE = 6  # rows of table people
K = 3  # canaries per run
# Table names are letters, digits and _ only (groups.table_problem); column names are anything:
# quotes, a semicolon, a comment. These two still read "pnr" and "full name"; the third nothing.
ODD_TABLE = "Odd_Table"
ODD_PNR = 'Pnr"); --'
ODD_NAME = "Full Name'"
ODD_OTHER = 'x"; DROP TABLE people; --'


@pytest_asyncio.fixture(scope="module")
async def tables(pg_env: DbEnv) -> None:
    """Tables a canary can fill (people, the odd one) and one it cannot (wards)."""
    conn = await pg_admin(pg_env.database)
    try:
        await conn.execute(
            "CREATE TABLE people (id int PRIMARY KEY, personnummer text NOT NULL,"
            " name varchar(60), birth_date date, sex char(1), postcode text, weight int NOT NULL,"
            " note varchar(3));"
            "INSERT INTO people SELECT i, '19500101-00' || i, 'Real Person ' || i,"
            " '1950-01-01'::date + i, 'F', '11122', 70 + i, 'ok'"
            " FROM generate_series(1, 6) AS i;"
            "CREATE TABLE wards (ward text, beds int);"
            "INSERT INTO wards VALUES ('w1', 10), ('w2', 12);"
        )
        await conn.execute(
            f'CREATE TABLE "{ODD_TABLE}" ({quote_ident(ODD_PNR)} bigint, "{ODD_NAME}" text,'
            f" {quote_ident(ODD_OTHER)} int, n int)"
        )
        await conn.execute(f"INSERT INTO \"{ODD_TABLE}\" VALUES (1, 'a', 2, 1)")  # noqa: S608
    finally:
        await conn.close()


async def _schemas(database: str, account: str) -> list[str]:
    conn = await pg_admin(database)
    try:
        rows = await conn.fetch(
            "SELECT nspname::text AS name FROM pg_namespace WHERE nspname = ANY($1::text[])",
            [account, hidden_schema(account), canaries_schema(account)],
        )
        return sorted(r["name"] for r in rows)
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def planted(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> AsyncIterator[tuple[str, str, str]]:
    """A run's account with its canaries in people, wards and the odd table."""
    run_id = new_run_id()
    account, password = account_name(run_id), new_password()
    pg_env.accounts.append(account)
    result = await pg_backend.issue_with_canaries(
        account,
        password,
        ["people", "wards", ODD_TABLE],
        canaries=canary_rows(KEY, run_id, K),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        statement_timeout_s=30,
    )
    assert result.granted == ["people", "wards", ODD_TABLE]
    assert result.planted == ["people", ODD_TABLE]
    yield run_id, account, password
    await pg_backend.revoke(account)


def test_postgres_plants_canaries(pg_backend: PostgresBackend) -> None:
    assert isinstance(pg_backend, CanaryBackend)


async def test_the_account_reads_the_rows_and_the_runs_canaries(
    planted: tuple[str, str, str], pg_env: DbEnv
) -> None:
    run_id, account, password = planted
    expected = canary_rows(KEY, run_id, K)
    conn = await pg_connect_as(account, password, pg_env.database)
    try:
        # Unqualified names, as the job writes them, resolve to the views.
        rows = await conn.fetch("SELECT * FROM people ORDER BY id NULLS LAST")
        assert len(rows) == PEOPLE + K
        canaries = [dict(r) for r in rows if r["id"] >= 700_000_000]
        assert [
            (r["id"], r["personnummer"], r["name"], str(r["birth_date"]), r["sex"], r["postcode"])
            for r in canaries
        ] == sorted(
            (c.patient_id, c.personnummer, c.name, c.birth_date, c.sex, c.postcode)
            for c in expected
        )
        # Columns no canary field fills are NULL, NOT NULL in the table or not; a varchar(3)
        # takes nothing.
        assert {(r["weight"], r["note"]) for r in canaries} == {(None, None)}
        assert await conn.fetchval("SELECT count(*) FROM wards") == 2
        odd = await conn.fetch(f'SELECT * FROM "{ODD_TABLE}"')  # noqa: S608
        odd_canaries = [r for r in odd if r["n"] is None]
        assert len(odd) == 1 + K and len(odd_canaries) == K
        assert sorted(r[ODD_PNR] for r in odd_canaries) == sorted(
            int(c.personnummer.replace("-", "")) for c in expected
        )
        assert sorted(r[ODD_NAME] for r in odd_canaries) == sorted(c.name for c in expected)
        assert {r[ODD_OTHER] for r in odd_canaries} == {None}

        # What the job would print of them is what the airlock blocks for this run, and no
        # other run's canaries.
        printed = "\n".join(json.dumps(dict(r), default=str, ensure_ascii=False) for r in rows)
        # Each canary's personnummer, patient number and full name.
        assert Canaries.for_run(KEY, run_id, K).found([printed]) == 3 * K
        assert Canaries.for_run(KEY, new_run_id(), K).found([printed]) == 0

        for sql in (
            "SELECT count(*) FROM public.people",
            "SELECT count(*) FROM public.wards",
            f'SELECT count(*) FROM "{canaries_schema(account)}".people',  # noqa: S608
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(sql)
        # The views' definitions, which any role reads in pg_views, hold no canary value.
        definitions = " ".join(
            r["definition"]
            for r in await conn.fetch(
                "SELECT definition FROM pg_views WHERE schemaname = $1", account
            )
        )
        assert canaries_schema(account) in definitions
        for canary in expected:
            for value in (canary.name, canary.personnummer, str(canary.patient_id)):
                assert value not in definitions
    finally:
        await conn.close()


async def test_revoke_leaves_no_role_and_no_schema(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    run_id = new_run_id()
    account = account_name(run_id)
    pg_env.accounts.append(account)
    await pg_backend.issue_with_canaries(
        account,
        new_password(),
        ["people"],
        canaries=canary_rows(KEY, run_id, K),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    assert await _schemas(pg_env.database, account) == sorted([account, canaries_schema(account)])
    assert account in await pg_backend.accounts()
    await pg_backend.revoke(account)
    assert await _schemas(pg_env.database, account) == []
    assert account not in await pg_backend.accounts()
    admin = await pg_admin(pg_env.database)
    try:
        assert await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", account) is None
        # A view schema left without its role is the sweeper's: listed by the account's name
        # (never by its canaries schema's), and dropped with the canaries by revoke.
        await admin.execute(
            f'CREATE SCHEMA "{account}"; CREATE SCHEMA "{canaries_schema(account)}"'
        )
    finally:
        await admin.close()
    listed = await pg_backend.accounts()
    assert account in listed and canaries_schema(account) not in listed
    await pg_backend.revoke(account)
    assert await _schemas(pg_env.database, account) == []


async def test_the_replay_account_sees_the_same_canaries_less_a_few_rows(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    run_id = new_run_id()
    account, password = replay_account_name(run_id), new_password()
    pg_env.accounts.append(account)
    await pg_backend.issue_with_canaries(
        account,
        password,
        ["people"],
        canaries=canary_rows(KEY, run_id, K),
        hide_rows=2,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    try:
        conn = await pg_connect_as(account, password, pg_env.database)
        try:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM people")]
        finally:
            await conn.close()
        assert len(ids) == PEOPLE - 2 + K
        assert sorted(i for i in ids if i >= 700_000_000) == sorted(
            c.patient_id for c in canary_rows(KEY, run_id, K)
        )
        assert await _schemas(pg_env.database, account) == sorted(
            [account, hidden_schema(account), canaries_schema(account)]
        )
    finally:
        await pg_backend.revoke(account)
    assert await _schemas(pg_env.database, account) == []


async def test_an_account_without_canaries_reads_the_table_itself(
    tables: None, pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    # No canaries: plain SELECT on public, no per-run schema (canaries.rows = 0, the default).
    account, password = pg_env.new_account(), new_password()
    result = await pg_backend.issue_with_canaries(
        account,
        password,
        ["people"],
        canaries=(),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    try:
        assert result.planted == []
        assert await _schemas(pg_env.database, account) == []
        conn = await pg_connect_as(account, password, pg_env.database)
        try:
            assert await conn.fetchval("SELECT count(*) FROM public.people") == PEOPLE
        finally:
            await conn.close()
    finally:
        await pg_backend.revoke(account)
