"""PostgreSQL backend against a real server: what the issued role can and cannot do."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from secd_credentials.accounts import new_password
from secd_credentials.backends import BackendError, IssueResult, PostgresBackend
from secd_credentials.backends import postgres as postgres_module

from .conftest import (
    PATIENTS,
    PG_HOST,
    PG_PORT,
    PG_USER,
    DbEnv,
    pg_admin,
    pg_connect_as,
    scram_matches,
)

# Errors a dead connection may surface as, depending on when asyncpg notices.
DEAD = (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError)


def expiry(hours: float = 1) -> datetime:
    """An expiry in the future, at whole seconds so catalogue round trips compare equal."""
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)


@dataclass
class Issued:
    """One issued account and what issue() said."""

    account: str
    password: str
    expires_at: datetime
    result: IssueResult


REQUESTED = [
    "patients",
    "patient_names",
    "elsewhere",  # only in the other database
    "hidden_tbl",  # in this database, schema hidden
    "nosuch",
    "counter",  # a sequence
    "mixed",  # the table is "Mixed"
    'x"; DROP TABLE secrets; --',
    "patients",
]


@pytest_asyncio.fixture(scope="module")
async def issued(pg_env: DbEnv, pg_backend: PostgresBackend) -> Issued:
    """One account, issued for a mix of real, absent, misplaced and hostile tables."""
    account, password, expires_at = pg_env.new_account(), new_password(), expiry()
    result = await pg_backend.issue(
        account,
        password,
        REQUESTED,
        expires_at=expires_at,
        max_connections=3,
        statement_timeout_s=7,
    )
    return Issued(account, password, expires_at, result)


@pytest_asyncio.fixture
async def as_account(issued: Issued, pg_env: DbEnv) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the issued account to its database."""
    conn = await pg_connect_as(issued.account, issued.password, pg_env.database)
    yield conn
    await conn.close()


async def test_grants_only_existing_public_tables(issued: Issued, pg_env: DbEnv) -> None:
    db = pg_env.database
    assert issued.result.granted == ["patients", "patient_names"]
    reasons = {r.name: r.reason for r in issued.result.refused}
    assert reasons == {
        "elsewhere": f"table elsewhere does not exist in database {db}",
        "hidden_tbl": f"table hidden_tbl does not exist in database {db}",
        "nosuch": f"table nosuch does not exist in database {db}",
        "counter": f"counter is a sequence, not a table, in database {db}",
        "mixed": f"table mixed does not exist in database {db}",
        'x"; DROP TABLE secrets; --': reasons['x"; DROP TABLE secrets; --'],
    }
    assert "contains" in reasons['x"; DROP TABLE secrets; --']


async def test_account_reads_granted_tables(as_account: asyncpg.Connection) -> None:
    rows = await as_account.fetch("SELECT id, name FROM patients ORDER BY id")
    assert [tuple(r) for r in rows] == PATIENTS
    assert await as_account.fetchval("SELECT count(*) FROM patient_names") == len(PATIENTS)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM secrets",
        "SELECT * FROM hidden.hidden_tbl",
        'SELECT * FROM "Mixed"',
        "SELECT nextval('counter')",
        "INSERT INTO patients VALUES (4, 'mallory')",
        "UPDATE patients SET name = 'x'",
        "DELETE FROM patients",
        "TRUNCATE patients",
        "CREATE TABLE public.mine (id int)",
        "CREATE SCHEMA mine",
        "CREATE VIEW leak AS SELECT * FROM patients",
        "SELECT * FROM pg_catalog.pg_authid",
        "SET ROLE postgres",
    ],
)
async def test_account_is_refused_everything_else(as_account: asyncpg.Connection, sql: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_account.execute(sql)


async def test_same_named_table_in_other_database_is_not_granted(
    issued: Issued, pg_env: DbEnv
) -> None:
    # PUBLIC may CONNECT to a new database by default; the grant must still not follow the name.
    conn = await pg_connect_as(issued.account, issued.password, pg_env.other_database)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM patients")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM elsewhere")
    finally:
        await conn.close()


async def test_hostile_table_name_changed_nothing(issued: Issued, pg_env: DbEnv) -> None:
    conn = await pg_admin(pg_env.database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM secrets") == 1
    finally:
        await conn.close()


async def test_session_settings_reach_the_account(as_account: asyncpg.Connection) -> None:
    assert await as_account.fetchval("SHOW statement_timeout") == "7s"
    with pytest.raises(asyncpg.QueryCanceledError):
        await as_account.execute("SET statement_timeout = 100; SELECT pg_sleep(1)")


async def test_role_catalogue_entry(issued: Issued, pg_env: DbEnv) -> None:
    admin = await pg_admin(pg_env.database)
    try:
        role = await admin.fetchrow("SELECT * FROM pg_authid WHERE rolname = $1", issued.account)
        assert role is not None
        assert role["rolcanlogin"] is True
        assert role["rolconnlimit"] == 3
        assert role["rolvaliduntil"] == issued.expires_at
        for attribute in (
            "rolsuper",
            "rolinherit",
            "rolcreaterole",
            "rolcreatedb",
            "rolreplication",
            "rolbypassrls",
        ):
            assert role[attribute] is False, attribute
        assert await admin.fetchval(
            "SELECT setconfig FROM pg_db_role_setting WHERE setrole = $1", role["oid"]
        ) == ["statement_timeout=7000", "idle_in_transaction_session_timeout=900000"]
        assert not await admin.fetch("SELECT 1 FROM pg_auth_members WHERE member = $1", role["oid"])
        grants = await admin.fetch(
            "SELECT table_schema, table_name, privilege_type"
            " FROM information_schema.role_table_grants WHERE grantee = $1 ORDER BY table_name",
            issued.account,
        )
        assert [tuple(g) for g in grants] == [
            ("public", "patient_names", "SELECT"),
            ("public", "patients", "SELECT"),
        ]
        privileges = await admin.fetchrow(
            "SELECT has_database_privilege($1, current_database(), 'CREATE') AS db_create,"
            " has_schema_privilege($1, 'public', 'CREATE') AS schema_create,"
            " has_schema_privilege($1, 'hidden', 'USAGE') AS hidden_usage,"
            " has_table_privilege($1, 'secrets', 'SELECT') AS secrets_select,"
            " has_table_privilege($1, 'patients', 'INSERT,UPDATE,DELETE,TRUNCATE') AS write",
            issued.account,
        )
        assert not any(privileges.values()), dict(privileges)
        # The stored verifier belongs to the password: recompute it from the stored salt.
        assert scram_matches(role["rolpassword"], issued.password)
    finally:
        await admin.close()


async def test_server_stores_exactly_the_verifier_sent(
    pg_env: DbEnv, pg_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # If the clear password had been sent, the server would have salted it itself.
    sent: list[str] = []
    real = postgres_module.scram_sha256_verifier

    def spy(password: str) -> str:
        sent.append(real(password))
        return sent[-1]

    monkeypatch.setattr(postgres_module, "scram_sha256_verifier", spy)
    account, password = pg_env.new_account(), new_password()
    await pg_backend.issue(account, password, ["patients"], expires_at=expiry())
    admin = await pg_admin()
    try:
        stored = await admin.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1", account
        )
    finally:
        await admin.close()
    assert sent == [stored]
    await pg_backend.revoke(account)


async def test_connection_limit_is_enforced(pg_env: DbEnv, pg_backend: PostgresBackend) -> None:
    account, password = pg_env.new_account(), new_password()
    await pg_backend.issue(account, password, ["patients"], expires_at=expiry(), max_connections=1)
    first = await pg_connect_as(account, password, pg_env.database)
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError):
            await pg_connect_as(account, password, pg_env.database)
    finally:
        await first.close()
    await pg_backend.revoke(account)


async def test_issue_again_resets_the_role_s_settings(
    pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    # That a retry resets the password and the grants is in tests/contracts/; this is what a
    # retry leaves in PostgreSQL's catalogue.
    account, first_password = pg_env.new_account(), new_password()
    kwargs = {"expires_at": expiry(), "max_connections": 2, "statement_timeout_s": 30}
    await pg_backend.issue(account, first_password, ["patients", "nosuch"], **kwargs)
    password = new_password()
    later = expiry(2)
    result = await pg_backend.issue(account, password, ["secrets"], expires_at=later)
    assert result == IssueResult(granted=["secrets"], refused=[])
    admin = await pg_admin(pg_env.database)
    try:
        role = await admin.fetchrow("SELECT * FROM pg_authid WHERE rolname = $1", account)
        assert (role["rolconnlimit"], role["rolvaliduntil"]) == (4, later)
        assert scram_matches(role["rolpassword"], password)
        assert not scram_matches(role["rolpassword"], first_password)
        assert await admin.fetchval(
            "SELECT setconfig FROM pg_db_role_setting WHERE setrole = $1", role["oid"]
        ) == ["idle_in_transaction_session_timeout=900000"]
    finally:
        await admin.close()
    conn = await pg_connect_as(account, password, pg_env.database)
    try:
        assert await conn.fetchval("SHOW statement_timeout") == "0"
    finally:
        await conn.close()
    await pg_backend.revoke(account)


async def test_revoke_ends_sessions_and_logins(
    pg_env: DbEnv, pg_backend: PostgresBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account, password = pg_env.new_account(), new_password()
    started = time.perf_counter()
    await pg_backend.issue(account, password, ["patients"], expires_at=expiry(), max_connections=4)
    issue_s = time.perf_counter() - started
    idle = await pg_connect_as(account, password, pg_env.database)
    busy = await pg_connect_as(account, password, pg_env.database)
    in_tx = await pg_connect_as(account, password, pg_env.database)
    assert await idle.fetchval("SELECT count(*) FROM patients") == len(PATIENTS)
    sleeping = asyncio.create_task(busy.fetchval("SELECT pg_sleep(60)"))
    transaction = in_tx.transaction()
    await transaction.start()
    await in_tx.fetch("SELECT * FROM patients")
    await asyncio.sleep(0.2)

    started = time.perf_counter()
    await pg_backend.revoke(account)
    revoke_s = time.perf_counter() - started

    try:
        for conn in (idle, in_tx):
            with pytest.raises(DEAD):
                await conn.fetchval("SELECT count(*) FROM patients")
        with pytest.raises(DEAD):
            await asyncio.wait_for(sleeping, 5)
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await pg_connect_as(account, password, pg_env.database)
    finally:
        for conn in (idle, busy, in_tx):
            conn.terminate()
    admin = await pg_admin(pg_env.database)
    try:
        assert (
            await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", account) == 0
        )
        assert (
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", account
            )
            == 0
        )
    finally:
        await admin.close()
    assert all(password not in record.getMessage() for record in caplog.records)
    print(f"postgres issue {issue_s * 1000:.1f} ms, revoke {revoke_s * 1000:.1f} ms")


async def test_refuses_to_reuse_a_privileged_role(
    pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    account, password = pg_env.new_account(), new_password()
    admin = await pg_admin()
    try:
        await admin.execute(f'CREATE ROLE "{account}" SUPERUSER NOLOGIN')
        with pytest.raises(BackendError, match="refusing to reuse") as excinfo:
            await pg_backend.issue(account, password, ["patients"], expires_at=expiry())
        assert password not in str(excinfo.value)
        role = await admin.fetchrow("SELECT * FROM pg_authid WHERE rolname = $1", account)
        assert role["rolcanlogin"] is False and role["rolpassword"] is None
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{account}"')
        await admin.close()


async def test_address() -> None:
    backend = PostgresBackend(
        postgres_module.PostgresSettings(
            database="d", host="db.internal", port=6543, socket_dir="/run/pg/"
        )
    )
    address = backend.address()
    assert (address.kind, address.database, address.host, address.port) == (
        "postgres",
        "d",
        "db.internal",
        6543,
    )
    assert address.socket == "/run/pg/.s.PGSQL.6543"


async def test_unreachable_server_is_a_backend_error() -> None:
    backend = PostgresBackend(
        postgres_module.PostgresSettings(database="d", port=1, password="hunter2")
    )
    with pytest.raises(BackendError) as excinfo:
        await backend.issue("secd_x", "pw", [], expires_at=expiry())
    assert "hunter2" not in str(excinfo.value)
    await backend.close()


# ---------------------------------------------------------------- least privilege


async def test_public_defaults_are_taken_away(issued: Issued, pg_env: DbEnv) -> None:
    admin = await pg_admin(pg_env.database)
    try:
        rows = await admin.fetch(
            "SELECT r.who,"
            " has_database_privilege(r.who, current_database(), 'CONNECT') AS connect,"
            " has_database_privilege(r.who, current_database(), 'TEMPORARY') AS temp,"
            " has_database_privilege(r.who, current_database(), 'CREATE') AS db_create,"
            " has_schema_privilege(r.who, 'public', 'CREATE') AS schema_create,"
            " has_function_privilege(r.who, 'pg_catalog.lo_create(oid)', 'EXECUTE') AS lo"
            " FROM unnest(ARRAY['public', $1]) AS r(who)",
            issued.account,
        )
        found = {row["who"]: dict(row) for row in rows}
        assert found["public"] == {
            "who": "public",
            "connect": False,
            "temp": False,
            "db_create": False,
            "schema_create": False,
            "lo": False,
        }
        # The account holds CONNECT of its own, and nothing else at database level.
        assert found[issued.account] == found["public"] | {"who": issued.account, "connect": True}
        # Table by table: SELECT on what was granted, nothing on the rest, no writes anywhere.
        matrix = await admin.fetch(
            "SELECT c.relname::text AS name,"
            " has_table_privilege($1, c.oid, 'SELECT') AS can_read,"
            " has_table_privilege($1, c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')"
            " AS can_write"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('public', 'hidden') AND c.relkind IN ('r', 'v', 'S')"
            " ORDER BY 1",
            issued.account,
        )
        assert {row["name"]: (row["can_read"], row["can_write"]) for row in matrix} == {
            "Mixed": (False, False),
            "counter": (False, False),
            "hidden_tbl": (False, False),
            "patient_names": (True, False),
            "patients": (True, False),
            "secrets": (False, False),
        }
    finally:
        await admin.close()


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TEMP TABLE scratch (id int)",
        "SELECT lo_create(0)",
        "SELECT lo_from_bytea(0, 'x')",
    ],
)
async def test_account_cannot_write_through_public_defaults(
    as_account: asyncpg.Connection, sql: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_account.execute(sql)


async def test_other_databases_open_to_public_are_reported(
    issued: Issued, pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    # The fresh "other" database still lets PUBLIC connect: reported, never silently assumed.
    assert pg_env.other_database in pg_backend.open_databases
    assert pg_env.database not in pg_backend.open_databases


async def test_a_grant_to_public_stops_the_issue(
    pg_env: DbEnv, pg_backend: PostgresBackend
) -> None:
    admin = await pg_admin(pg_env.database)
    account = pg_env.new_account()
    try:
        for grant, named in (
            ("GRANT SELECT ON secrets TO PUBLIC", "public.secrets"),
            ("GRANT SELECT (code) ON secrets TO PUBLIC", "public.secrets"),
            ("GRANT INSERT ON patients TO PUBLIC", "public.patients"),
            ("GRANT USAGE ON SEQUENCE counter TO PUBLIC", "public.counter"),
            ("GRANT TEMPORARY ON DATABASE {db} TO PUBLIC", f"database {pg_env.database}"),
        ):
            await admin.execute(grant.format(db=f'"{pg_env.database}"'))
            try:
                with pytest.raises(BackendError, match=f"{account}.*{re.escape(named)}"):
                    await pg_backend.issue(
                        account, new_password(), ["patients"], expires_at=expiry()
                    )
            finally:
                await admin.execute(
                    grant.format(db=f'"{pg_env.database}"')
                    .replace("GRANT", "REVOKE")
                    .replace(" TO ", " FROM ")
                )
            # The issue was one transaction: nothing of the role remains.
            assert not await admin.fetchval(
                "SELECT count(*) FROM pg_roles WHERE rolname = $1", account
            )
        # With PUBLIC's grants gone the same issue goes through.
        result = await pg_backend.issue(account, new_password(), ["patients"], expires_at=expiry())
        assert result.granted == ["patients"]
    finally:
        await admin.close()
    await pg_backend.revoke(account)


async def test_idle_in_transaction_is_cut_off(pg_env: DbEnv) -> None:
    backend = PostgresBackend(
        postgres_module.PostgresSettings(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            database=pg_env.database,
            idle_in_transaction_timeout_s=1,
        )
    )
    account, password = pg_env.new_account(), new_password()
    try:
        await backend.issue(account, password, ["patients"], expires_at=expiry())
        conn = await pg_connect_as(account, password, pg_env.database)
        try:
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "1s"
            transaction = conn.transaction()
            await transaction.start()
            await conn.fetch("SELECT * FROM patients")
            await asyncio.sleep(1.5)
            with pytest.raises(DEAD):
                await conn.fetch("SELECT * FROM patients")
        finally:
            conn.terminate()
        await backend.revoke(account)
    finally:
        await backend.close()


async def test_hardening_needs_the_database_owner(pg_env: DbEnv) -> None:
    admin = await pg_admin()
    weak = f"secdtest_weak_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE ROLE "{weak}" LOGIN')
    await admin.execute(f'GRANT CONNECT ON DATABASE "{pg_env.database}" TO "{weak}"')
    backend = PostgresBackend(
        postgres_module.PostgresSettings(
            host=PG_HOST, port=PG_PORT, user=weak, database=pg_env.database
        )
    )
    try:
        with pytest.raises(BackendError, match="connect as its owner or a superuser"):
            await backend.issue(
                pg_env.new_account(), new_password(), ["patients"], expires_at=expiry()
            )
    finally:
        await backend.close()
        await admin.execute(f'REVOKE ALL ON DATABASE "{pg_env.database}" FROM "{weak}"')
        await admin.execute(f'DROP ROLE "{weak}"')
        await admin.close()
