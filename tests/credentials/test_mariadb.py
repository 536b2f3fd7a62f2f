"""MariaDB backend against a real server: what the issued user can and cannot do."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiomysql
import pymysql
import pytest
import pytest_asyncio

from secd_credentials.accounts import mysql_native_hash, new_password
from secd_credentials.backends import (
    BackendError,
    IssueResult,
    MariaDBBackend,
    MariaDBSettings,
)
from tests.helpers import need

from .conftest import PATIENTS, DbEnv, my_admin, my_connect_as, my_query

ER_DBACCESS_DENIED = 1044
ER_ACCESS_DENIED = 1045
# For a user that does not exist MariaDB may answer as if it used another auth plugin.
ER_ACCESS_DENIED_NO_PASSWORD = 1698
ER_TABLEACCESS_DENIED = 1142
ER_USER_LIMIT_REACHED = 1226
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_STATEMENT_TIMEOUT = 1969


def expiry(hours: float = 1) -> datetime:
    """An expiry in the future."""
    return datetime.now(UTC) + timedelta(hours=hours)


def errno(excinfo: pytest.ExceptionInfo) -> int:
    """The server's error number of a PyMySQL error."""
    return excinfo.value.args[0]


@dataclass
class Issued:
    """One issued account and what issue() said."""

    account: str
    password: str
    result: IssueResult


REQUESTED = [
    "patients",
    "patient_names",
    "elsewhere",  # only in the other database
    "nosuch",
    "counter",  # a sequence
    "mixed",  # the table is `Mixed`; information_schema would match it case-insensitively
    "x`; DROP TABLE secrets; --",
    "patients",
]


@pytest_asyncio.fixture(scope="module")
async def issued(my_env: DbEnv, my_backend: MariaDBBackend) -> Issued:
    """One account, issued for a mix of real, absent, misplaced and hostile tables."""
    account, password = my_env.new_account(), new_password()
    result = await my_backend.issue(
        account, password, REQUESTED, expires_at=expiry(), max_connections=3, statement_timeout_s=7
    )
    return Issued(account, password, result)


@pytest_asyncio.fixture
async def as_account(issued: Issued, my_env: DbEnv) -> AsyncIterator[aiomysql.Connection]:
    """A connection as the issued account through the socket."""
    conn = await my_connect_as(issued.account, issued.password, my_env.database)
    yield conn
    conn.close()


async def test_grants_only_existing_tables_of_the_database(issued: Issued, my_env: DbEnv) -> None:
    db = my_env.database
    assert issued.result.granted == ["patients", "patient_names"]
    reasons = {r.name: r.reason for r in issued.result.refused}
    hostile = "x`; DROP TABLE secrets; --"
    assert reasons == {
        "elsewhere": f"table elsewhere does not exist in database {db}",
        "nosuch": f"table nosuch does not exist in database {db}",
        "counter": f"counter is a sequence, not a table, in database {db}",
        "mixed": f"table mixed does not exist in database {db}",
        hostile: reasons[hostile],
    }
    assert "contains" in reasons[hostile]


async def test_account_reads_granted_tables(as_account: aiomysql.Connection) -> None:
    assert await my_query(as_account, "SELECT id, name FROM patients ORDER BY id") == PATIENTS
    assert len(await my_query(as_account, "SELECT name FROM patient_names")) == len(PATIENTS)


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELECT * FROM secrets", ER_TABLEACCESS_DENIED),
        ("SELECT * FROM `Mixed`", ER_TABLEACCESS_DENIED),
        ("SELECT NEXTVAL(counter)", ER_TABLEACCESS_DENIED),
        ("INSERT INTO patients VALUES (4, 'mallory')", ER_TABLEACCESS_DENIED),
        ("UPDATE patients SET name = 'x'", ER_TABLEACCESS_DENIED),
        ("DELETE FROM patients", ER_TABLEACCESS_DENIED),
        ("DROP TABLE patients", ER_TABLEACCESS_DENIED),
        ("CREATE TABLE mine (id int)", ER_TABLEACCESS_DENIED),
        ("CREATE VIEW leak AS SELECT * FROM patients", ER_TABLEACCESS_DENIED),
        ("SELECT * FROM mysql.user", ER_TABLEACCESS_DENIED),
        ("CREATE DATABASE secdtest_mine", ER_DBACCESS_DENIED),
        ("SET GLOBAL max_connections = 1", ER_SPECIFIC_ACCESS_DENIED),
    ],
)
async def test_account_is_refused_everything_else(
    as_account: aiomysql.Connection, sql: str, code: int
) -> None:
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        await my_query(as_account, sql)
    assert errno(excinfo) == code


async def test_same_named_table_in_other_database_is_not_granted(
    issued: Issued, my_env: DbEnv, as_account: aiomysql.Connection
) -> None:
    other = my_env.other_database
    for table in ("patients", "elsewhere"):
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            await my_query(as_account, f"SELECT * FROM `{other}`.`{table}`")  # noqa: S608
        assert errno(excinfo) == ER_TABLEACCESS_DENIED
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        await my_connect_as(issued.account, issued.password, other)
    assert errno(excinfo) == ER_DBACCESS_DENIED


async def test_hostile_table_name_changed_nothing(issued: Issued, my_env: DbEnv) -> None:
    admin = await my_admin()
    try:
        count = f"SELECT count(*) FROM `{my_env.database}`.secrets"  # noqa: S608
        assert await my_query(admin, count) == [(1,)]
    finally:
        admin.close()


async def test_statement_time_limit_reaches_the_account(as_account: aiomysql.Connection) -> None:
    assert await my_query(as_account, "SELECT @@max_statement_time") == [(7.0,)]
    await my_query(as_account, "SET max_statement_time = 0.1")
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        await my_query(as_account, "SELECT SLEEP(1) FROM patients")
    assert errno(excinfo) == ER_STATEMENT_TIMEOUT


async def test_user_catalogue_entry(issued: Issued, my_env: DbEnv) -> None:
    admin = await my_admin()
    try:
        rows = await my_query(
            admin, "SELECT Host, Priv FROM mysql.global_priv WHERE User = %s", [issued.account]
        )
        assert [host for host, _ in rows] == ["localhost"]
        priv = json.loads(rows[0][1])
        assert priv["max_user_connections"] == 3
        assert priv["max_statement_time"] == 7
        assert priv["account_locked"] is False
        assert priv["access"] == 0  # no global privileges
        assert priv["plugin"] == "mysql_native_password"
        assert priv["authentication_string"] == mysql_native_hash(issued.password)
        grants = {
            row[0]
            for row in await my_query(admin, f"SHOW GRANTS FOR '{issued.account}'@'localhost'")
        }
        user = f"`{issued.account}`@`localhost`"
        db = my_env.database
        assert {g.split(" IDENTIFIED")[0].split(" WITH ")[0] for g in grants} == {
            f"GRANT USAGE ON *.* TO {user}",
            f"GRANT SELECT ON `{db}`.`patients` TO {user}",
            f"GRANT SELECT ON `{db}`.`patient_names` TO {user}",
        }
        # The server's own hash function agrees with ours.
        assert await my_query(admin, "SELECT PASSWORD(%s)", [issued.password]) == [
            (mysql_native_hash(issued.password),)
        ]
    finally:
        admin.close()


async def test_connection_limit_is_enforced(my_env: DbEnv, my_backend: MariaDBBackend) -> None:
    account, password = my_env.new_account(), new_password()
    await my_backend.issue(account, password, ["patients"], expires_at=expiry(), max_connections=1)
    first = await my_connect_as(account, password, my_env.database)
    try:
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            await my_connect_as(account, password, my_env.database)
        assert errno(excinfo) == ER_USER_LIMIT_REACHED
    finally:
        first.close()
    await my_backend.revoke(account)


async def test_issue_again_resets_the_user_s_limits(
    my_env: DbEnv, my_backend: MariaDBBackend
) -> None:
    # That a retry resets the password and the grants is in tests/contracts/; this is what a
    # retry leaves in MariaDB's catalogue.
    account, first_password = my_env.new_account(), new_password()
    kwargs = {"expires_at": expiry(), "max_connections": 2, "statement_timeout_s": 30}
    await my_backend.issue(account, first_password, ["patients", "nosuch"], **kwargs)
    password = new_password()
    result = await my_backend.issue(account, password, ["secrets"], expires_at=expiry(2))
    assert result == IssueResult(granted=["secrets"], refused=[])
    admin = await my_admin()
    try:
        ((priv,),) = await my_query(
            admin, "SELECT Priv FROM mysql.global_priv WHERE User = %s", [account]
        )
    finally:
        admin.close()
    values = json.loads(priv)
    assert (values["max_user_connections"], values["max_statement_time"]) == (4, 0)
    assert values["authentication_string"] == mysql_native_hash(password)
    assert values["account_locked"] is False
    conn = await my_connect_as(account, password, my_env.database)
    try:
        assert await my_query(conn, "SELECT @@max_statement_time") == [(0.0,)]
    finally:
        conn.close()
    await my_backend.revoke(account)


async def test_revoke_ends_sessions_and_logins(
    my_env: DbEnv, my_backend: MariaDBBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account, password = my_env.new_account(), new_password()
    started = time.perf_counter()
    await my_backend.issue(account, password, ["patients"], expires_at=expiry(), max_connections=4)
    issue_s = time.perf_counter() - started
    idle = await my_connect_as(account, password, my_env.database)
    busy = await my_connect_as(account, password, my_env.database)
    assert len(await my_query(idle, "SELECT * FROM patients")) == len(PATIENTS)
    sleeping = asyncio.create_task(my_query(busy, "SELECT SLEEP(60)"))
    await asyncio.sleep(0.2)

    started = time.perf_counter()
    await my_backend.revoke(account)
    revoke_s = time.perf_counter() - started

    try:
        with pytest.raises((pymysql.err.OperationalError, pymysql.err.InterfaceError)):
            await my_query(idle, "SELECT * FROM patients")
        # A killed SLEEP() returns 1 rather than failing; either way the session must be gone.
        try:
            await asyncio.wait_for(sleeping, 5)
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
            pass
        with pytest.raises((pymysql.err.OperationalError, pymysql.err.InterfaceError)):
            await my_query(busy, "SELECT 1")
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            await my_connect_as(account, password, my_env.database)
        assert errno(excinfo) in (ER_ACCESS_DENIED, ER_ACCESS_DENIED_NO_PASSWORD)
    finally:
        idle.close()
        busy.close()
    admin = await my_admin()
    try:
        assert await my_query(
            admin, "SELECT count(*) FROM mysql.global_priv WHERE User = %s", [account]
        ) == [(0,)]
        assert await my_query(
            admin, "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = %s", [account]
        ) == [(0,)]
    finally:
        admin.close()
    assert all(password not in record.getMessage() for record in caplog.records)
    print(f"mariadb issue {issue_s * 1000:.1f} ms, revoke {revoke_s * 1000:.1f} ms")


async def test_address() -> None:
    backend = MariaDBBackend(
        MariaDBSettings(database="d", host="db.internal", port=3307, socket="/run/m.sock")
    )
    address = backend.address()
    assert (address.kind, address.database, address.host, address.port, address.socket) == (
        "mysql",
        "d",
        "db.internal",
        3307,
        "/run/m.sock",
    )


async def test_unreachable_server_is_a_backend_error(tmp_path) -> None:
    backend = MariaDBBackend(
        MariaDBSettings(database="d", socket=str(tmp_path / "nothing.sock"), password="hunter2")
    )
    with pytest.raises(BackendError) as excinfo:
        await backend.issue("secd_x", "pw", [], expires_at=expiry())
    assert "hunter2" not in str(excinfo.value)
    await backend.close()


# ---------------------------------------------------------------- least privilege


async def test_catalogue_shows_exactly_the_grants(issued: Issued, my_env: DbEnv) -> None:
    grantee = f"'{issued.account}'@'localhost'"
    admin = await my_admin()
    try:
        assert await my_query(
            admin,
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s",
            [grantee],
        ) == [("USAGE",)]
        for table in ("SCHEMA_PRIVILEGES", "COLUMN_PRIVILEGES"):
            sql = f"SELECT * FROM information_schema.{table} WHERE GRANTEE = %s"  # noqa: S608
            assert await my_query(admin, sql, [grantee]) == [], table
        rows = await my_query(
            admin,
            "SELECT TABLE_SCHEMA, TABLE_NAME, PRIVILEGE_TYPE, IS_GRANTABLE"
            " FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = %s",
            [grantee],
        )
        assert sorted(rows) == [
            (my_env.database, "patient_names", "SELECT", "NO"),
            (my_env.database, "patients", "SELECT", "NO"),
        ]
        # Bound to the socket's host only: no other host's account of that name exists.
        assert await my_query(
            admin, "SELECT Host FROM mysql.global_priv WHERE User = %s", [issued.account]
        ) == [("localhost",)]
    finally:
        admin.close()


async def test_a_grant_to_public_stops_the_issue(my_env: DbEnv, my_backend: MariaDBBackend) -> None:
    db = my_env.database
    admin = await my_admin()
    account = my_env.new_account()
    try:
        for grant, named in (
            (f"GRANT SELECT ON `{db}`.`secrets` TO PUBLIC", f"SELECT on {db}.secrets"),
            (f"GRANT SELECT (code) ON `{db}`.`secrets` TO PUBLIC", f"SELECT on {db}.secrets.code"),
            (f"GRANT INSERT ON `{db}`.* TO PUBLIC", f"INSERT on {db}.*"),
        ):
            try:
                await my_query(admin, grant)
            except pymysql.err.ProgrammingError:
                need(False, "this server has no PUBLIC (MariaDB 10.11 added it)")
            try:
                with pytest.raises(BackendError, match=re.escape(named)):
                    await my_backend.issue(
                        account, new_password(), ["patients"], expires_at=expiry()
                    )
            finally:
                await my_query(admin, grant.replace("GRANT", "REVOKE").replace(" TO ", " FROM "))
            assert await my_query(
                admin, "SELECT count(*) FROM mysql.global_priv WHERE User = %s", [account]
            ) == [(0,)]
        result = await my_backend.issue(account, new_password(), ["patients"], expires_at=expiry())
        assert result.granted == ["patients"]
    finally:
        admin.close()
    await my_backend.revoke(account)
