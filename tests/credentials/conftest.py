"""Real PostgreSQL and MariaDB servers, with databases, tables and accounts the tests own.

Every database and account is created here under a random name and dropped afterwards; nothing
that the tests did not create is touched. Point the tests elsewhere with SECD_TEST_PG_* and
SECD_TEST_MYSQL_* variables; a server that cannot be reached skips its tests, and fails them
under CI=true.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomysql
import asyncpg
import pymysql
import pytest_asyncio

from secd_credentials.accounts import account_name, is_replay_account
from secd_credentials.backends import (
    MariaDBBackend,
    MariaDBSettings,
    PostgresBackend,
    PostgresSettings,
)
from secd_shared.events import new_run_id
from tests.helpers import need

PG_HOST = os.environ.get("SECD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SECD_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SECD_TEST_PG_USER", "postgres")
MY_SOCKET = os.environ.get("SECD_TEST_MYSQL_SOCKET", "/run/mysqld/mysqld.sock")
MY_USER = os.environ.get("SECD_TEST_MYSQL_USER", "root")

PATIENTS = [(1, "ada"), (2, "grace"), (3, "edsger")]


@dataclass
class DbEnv:
    """The databases one test module works in, and the accounts it made."""

    database: str
    other_database: str
    accounts: list[str] = field(default_factory=list)

    def new_account(self) -> str:
        """A fresh run's account name, remembered for cleanup."""
        name = account_name(new_run_id())
        self.accounts.append(name)
        return name


def _test_name() -> str:
    return f"secdtest_{secrets.token_hex(6)}"


# ---------------------------------------------------------------- PostgreSQL


async def pg_admin(database: str = "postgres") -> asyncpg.Connection:
    """A superuser connection to `database`."""
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=database)


async def pg_connect_as(account: str, password: str, database: str) -> asyncpg.Connection:
    """A connection as a run's account, over TCP as jobs would without a socket."""
    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=account, password=password, database=database
    )


def scram_matches(stored: str, password: str) -> bool:
    """Whether PostgreSQL's stored SCRAM verifier `stored` was made from `password`.

    A server that trusts TCP logins from 127.0.0.1 (as the test machines' servers may) lets any
    password in, so a login proves nothing about it: this recomputes the verifier from its salt.
    """
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", stored)
    assert match is not None, "not a SCRAM verifier"
    iterations, salt = int(match[1]), base64.b64decode(match[2])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return (base64.b64decode(match[3]), base64.b64decode(match[4])) == (stored_key, server_key)


@pytest_asyncio.fixture(scope="module")
async def pg_env() -> AsyncIterator[DbEnv]:
    """Two fresh databases: one with patients/secrets/hidden.hidden_tbl, one with patients."""
    try:
        admin = await pg_admin()
    except (OSError, asyncpg.PostgresError) as exc:
        need(False, f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {exc}")
    env = DbEnv(database=_test_name(), other_database=_test_name())
    try:
        for name in (env.database, env.other_database):
            await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await pg_admin(env.database)
        try:
            await conn.execute(
                "CREATE TABLE patients (id int PRIMARY KEY, name text NOT NULL);"
                "CREATE TABLE secrets (id int PRIMARY KEY, code text NOT NULL);"
                "INSERT INTO secrets VALUES (1, 'launch');"
                'CREATE TABLE "Mixed" (id int);'
                "CREATE SEQUENCE counter;"
                "CREATE VIEW patient_names AS SELECT name FROM patients;"
                "CREATE SCHEMA hidden;"
                "CREATE TABLE hidden.hidden_tbl (id int);"
            )
            await conn.executemany("INSERT INTO patients VALUES ($1, $2)", PATIENTS)
        finally:
            await conn.close()
        conn = await pg_admin(env.other_database)
        try:
            await conn.execute(
                "CREATE TABLE patients (id int, name text);"
                "INSERT INTO patients VALUES (99, 'elsewhere');"
                "CREATE TABLE elsewhere (id int);"
            )
        finally:
            await conn.close()
        yield env
    finally:
        await _pg_cleanup(admin, env)
        await admin.close()


async def _pg_cleanup(admin: asyncpg.Connection, env: DbEnv) -> None:
    for account in env.accounts:
        oid = await admin.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", account)
        if oid is None:
            continue
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usesysid = $1", oid
        )
        for database in (env.database, env.other_database):
            conn = await pg_admin(database)
            try:
                await conn.execute(f'DROP OWNED BY "{account}"')
            finally:
                await conn.close()
        await admin.execute(f'DROP ROLE IF EXISTS "{account}"')
    for database in (env.database, env.other_database):
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="module")
async def pg_backend(pg_env: DbEnv) -> AsyncIterator[PostgresBackend]:
    """A backend granting in the module's first database, as the superuser."""
    backend = PostgresBackend(
        PostgresSettings(host=PG_HOST, port=PG_PORT, user=PG_USER, database=pg_env.database)
    )
    yield backend
    await backend.close()


# ---------------------------------------------------------------- MariaDB


async def my_admin() -> aiomysql.Connection:
    """A root connection over the socket, autocommitting."""
    return await aiomysql.connect(
        unix_socket=MY_SOCKET,
        user=MY_USER,
        autocommit=True,
        init_command="SET SESSION sql_notes = 0",
    )


async def my_connect_as(account: str, password: str, database: str) -> aiomysql.Connection:
    """A connection as a run's account through the Unix socket, as jobs connect."""
    return await aiomysql.connect(
        unix_socket=MY_SOCKET, user=account, password=password, db=database, autocommit=True
    )


async def my_query(conn: aiomysql.Connection, sql: str, args: object = None) -> list[tuple]:
    """All rows of one statement."""
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())


@pytest_asyncio.fixture(scope="module")
async def my_env() -> AsyncIterator[DbEnv]:
    """Two fresh databases: one with patients/secrets/Mixed/counter, one with patients."""
    try:
        admin = await my_admin()
    except (OSError, pymysql.MySQLError) as exc:
        need(False, f"MariaDB not reachable at {MY_SOCKET}: {exc}")
    env = DbEnv(database=_test_name(), other_database=_test_name())
    try:
        a, b = env.database, env.other_database
        for sql in (
            f"CREATE DATABASE `{a}`",
            f"CREATE DATABASE `{b}`",
            f"USE `{a}`",
            "CREATE TABLE patients (id int PRIMARY KEY, name varchar(40) NOT NULL)",
            "CREATE TABLE secrets (id int PRIMARY KEY, code varchar(40) NOT NULL)",
            "INSERT INTO secrets VALUES (1, 'launch')",
            "CREATE TABLE `Mixed` (id int)",
            "CREATE SEQUENCE counter",
            "CREATE VIEW patient_names AS SELECT name FROM patients",
        ):
            await my_query(admin, sql)
        async with admin.cursor() as cur:
            await cur.executemany("INSERT INTO patients VALUES (%s, %s)", PATIENTS)
        for sql in (
            f"USE `{b}`",
            "CREATE TABLE patients (id int, name varchar(40))",
            "INSERT INTO patients VALUES (99, 'elsewhere')",
            "CREATE TABLE elsewhere (id int)",
        ):
            await my_query(admin, sql)
        yield env
    finally:
        for account in env.accounts:
            await my_query(admin, f"DROP USER IF EXISTS '{account}'@'localhost'")
            for (thread_id,) in await my_query(
                admin, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", [account]
            ):
                await my_query(admin, f"KILL CONNECTION {int(thread_id)}")
            if is_replay_account(account):
                # A replay account's views and hidden keys live in databases of its name.
                for database in (account, account + "_hidden"):
                    await my_query(admin, f"DROP DATABASE IF EXISTS `{database}`")
        for database in (env.database, env.other_database):
            await my_query(admin, f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()


@pytest_asyncio.fixture(scope="module")
async def my_backend(my_env: DbEnv) -> AsyncIterator[MariaDBBackend]:
    """A backend granting in the module's first database, as root over the socket."""
    backend = MariaDBBackend(
        MariaDBSettings(
            host="localhost", port=3306, user=MY_USER, socket=MY_SOCKET, database=my_env.database
        )
    )
    yield backend
    await backend.close()
