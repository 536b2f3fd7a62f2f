"""The credentials port's contract: one suite, run against every database backend.

`BackendContract` says what any `Backend` must do, in terms a job would notice (can this
account log in, what can it read, does revocation cut it off); each `Test...Backend` class below
runs it against one adapter through a small harness that logs in the way that database's
clients do:

- MemoryBackend, always;
- PostgresBackend and MariaDBBackend against the machine's servers (fresh databases made by
  tests/credentials/conftest.py; skipped when a server cannot be reached, as there);
- Neo4jBackend against the server named by SECD_TEST_NEO4J_URI (with SECD_TEST_NEO4J_USER and
  SECD_TEST_NEO4J_PASSWORD), skipped when it is not set. On Neo4j Community, which cannot
  confine an account to labels, the backend runs with accept_full_read and the checks that an
  account reads nothing else are skipped, saying why.

What only one adapter does (PostgreSQL's catalogue entries and hardening, MariaDB's PUBLIC
check, Neo4j's statement shapes, hostile input end to end) stays in tests/credentials/.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomysql
import asyncpg
import neo4j
import neo4j.exceptions
import pymysql
import pytest
import pytest_asyncio

from secd_credentials.accounts import ACCOUNT_PATTERN, account_name, new_password
from secd_credentials.backends import (
    Backend,
    MariaDBBackend,
    MariaDBSettings,
    MemoryBackend,
    MemorySession,
    Neo4jBackend,
    Neo4jSettings,
    PostgresBackend,
    PostgresSettings,
)
from secd_credentials.backends import neo4j as nb
from secd_shared.dbkind import DB_KINDS
from secd_shared.events import new_run_id
from tests.credentials.conftest import (
    MY_SOCKET,
    MY_USER,
    PATIENTS,
    PG_HOST,
    PG_PORT,
    PG_USER,
    DbEnv,
    my_connect_as,
    my_env,  # noqa: F401 - a fixture, used by TestMariaDBBackend
    my_query,
    pg_admin,
    pg_connect_as,
    pg_env,  # noqa: F401 - a fixture, used by TestPostgresBackend
    scram_matches,
)

HOSTILE = "x`; DROP TABLE secrets; --"
MISSING = "nosuch"


class Denied(Exception):
    """The database refused a login."""


class Ended(Exception):
    """A session that worked no longer does: the database cut it."""


class Session:
    """One login as an issued account."""

    async def rows(self, table: str) -> int | None:
        """How many rows of `table` the account sees; None when the database refuses (or hides)
        them; Ended when the session is gone."""
        raise NotImplementedError

    async def close(self) -> None:
        """Log out; safe after the database cut the session."""
        raise NotImplementedError


class Harness:
    """One adapter under the contract: its backend, its tables, and a way to log in."""

    backend: Backend
    database: str
    # An existing table with len(PATIENTS) rows, and another with one row.
    granted: str
    other: str
    # False where the database cannot keep an account to its tables (Neo4j Community).
    confines_reads: bool = True

    def __init__(self, new_account: Callable[[], str]) -> None:
        """`new_account` gives fresh account names and remembers them for cleanup."""
        self.new_account = new_account

    async def login(self, account: str, password: str) -> Session:
        """A session as `account`, as a job would open it; Denied when refused."""
        raise NotImplementedError


def expiry(hours: float = 1) -> datetime:
    """A lease's end, `hours` from now, at whole seconds."""
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)


class BackendContract:
    """What every Backend adapter does; subclasses give a `harness` fixture for one adapter."""

    def confined(self, harness: Harness) -> None:
        """Skip a check of confinement where the adapter cannot confine."""
        if not harness.confines_reads:
            # Only Neo4j Community cannot (no fine-grained privileges): a Neo4j skip, kept under CI.
            pytest.skip(f"{type(harness.backend).__name__} here cannot confine reads to tables")

    async def test_follows_the_port(self, harness: Harness) -> None:
        backend = harness.backend
        assert isinstance(backend, Backend)
        assert backend.kind in DB_KINDS
        address = backend.address()
        assert (address.kind, address.database) == (backend.kind, harness.database)

    async def test_grants_existing_tables_once_and_refuses_the_rest(self, harness: Harness) -> None:
        account = harness.new_account()
        wanted = [harness.granted, MISSING, harness.granted, HOSTILE]
        result = await harness.backend.issue(account, new_password(), wanted, expires_at=expiry())
        assert result.granted == [harness.granted]
        reasons = {r.name: r.reason for r in result.refused}
        assert harness.granted not in reasons
        assert MISSING in reasons[MISSING] and "does not exist" in reasons[MISSING]
        assert harness.database in reasons[MISSING]
        # Refused for its name, before any server was asked about it.
        assert "contains '`'" in reasons[HOSTILE]
        await harness.backend.revoke(account)

    async def test_the_account_reads_its_tables_and_nothing_else(self, harness: Harness) -> None:
        account, password = harness.new_account(), new_password()
        await harness.backend.issue(account, password, [harness.granted], expires_at=expiry())
        session = await harness.login(account, password)
        try:
            assert await session.rows(harness.granted) == len(PATIENTS)
            if harness.confines_reads:
                assert await session.rows(harness.other) is None
        finally:
            await session.close()
        await harness.backend.revoke(account)

    async def test_a_wrong_password_is_refused(self, harness: Harness) -> None:
        account, password = harness.new_account(), new_password()
        await harness.backend.issue(account, password, [harness.granted], expires_at=expiry())
        with pytest.raises(Denied):
            await harness.login(account, new_password())
        await harness.backend.revoke(account)

    async def test_issuing_again_resets_the_password_and_the_grants(self, harness: Harness) -> None:
        account, first, second = harness.new_account(), new_password(), new_password()
        backend = harness.backend
        once = await backend.issue(account, first, [harness.granted, MISSING], expires_at=expiry())
        twice = await backend.issue(account, first, [harness.granted, MISSING], expires_at=expiry())
        assert once == twice
        result = await backend.issue(account, second, [harness.other], expires_at=expiry(2))
        assert result.granted == [harness.other]
        with pytest.raises(Denied):
            await harness.login(account, first)
        session = await harness.login(account, second)
        try:
            assert await session.rows(harness.other) == 1
            if harness.confines_reads:
                assert await session.rows(harness.granted) is None
        finally:
            await session.close()
        await backend.revoke(account)

    async def test_revoking_ends_sessions_and_logins_and_can_be_repeated(
        self, harness: Harness
    ) -> None:
        account, password = harness.new_account(), new_password()
        backend = harness.backend
        await backend.issue(account, password, [harness.granted], expires_at=expiry())
        session = await harness.login(account, password)
        try:
            assert await session.rows(harness.granted) == len(PATIENTS)
            await backend.revoke(account)
            # Dropping an account ends none of its sessions on any of the servers: revoke must.
            with pytest.raises(Ended):
                await session.rows(harness.granted)
        finally:
            await session.close()
        with pytest.raises(Denied):
            await harness.login(account, password)
        assert account not in await backend.accounts()
        await backend.revoke(account)
        await backend.revoke(harness.new_account())  # never issued

    async def test_issues_and_revocations_at_once_all_succeed(self, harness: Harness) -> None:
        # The run's end and the sweeper (here or on another replica) may revoke together.
        # Other runs' accounts are issued and revoked at the same time: grants of different
        # accounts change the same catalog rows.
        backend = harness.backend
        accounts = [harness.new_account() for _ in range(10)]
        first, second = accounts[:5], accounts[5:]

        async def issue(account: str) -> None:
            await backend.issue(account, new_password(), [harness.granted], expires_at=expiry())

        await asyncio.gather(*map(issue, first))
        await asyncio.gather(
            *(backend.revoke(a) for a in first for _ in range(4)), *map(issue, second)
        )
        await asyncio.gather(*map(backend.revoke, second))
        assert not set(accounts) & set(await backend.accounts())

    async def test_accounts_lists_what_secd_issued_until_revoked(self, harness: Harness) -> None:
        backend = harness.backend
        first, second = harness.new_account(), harness.new_account()
        for account in (first, second):
            await backend.issue(account, new_password(), [harness.granted], expires_at=expiry())
        listed = await backend.accounts()
        assert {first, second} <= set(listed)
        assert listed == sorted(listed)
        assert all(n.startswith("secd_r") and ACCOUNT_PATTERN.fullmatch(n) for n in listed)
        await backend.revoke(first)
        listed = await backend.accounts()
        assert first not in listed and second in listed
        await backend.revoke(second)

    async def test_an_expired_lease_is_kept_until_revoked(self, harness: Harness) -> None:
        # Where the database cannot expire an account itself, revocation is what ends it; an
        # account past its lease must still be listed, so the sweeper finds it.
        account = harness.new_account()
        backend = harness.backend
        past = datetime.now(UTC) - timedelta(seconds=1)
        result = await backend.issue(account, new_password(), [harness.granted], expires_at=past)
        assert result.granted == [harness.granted]
        assert account in await backend.accounts()
        await backend.revoke(account)
        assert account not in await backend.accounts()

    async def test_nothing_to_grant_is_a_result_not_an_error(self, harness: Harness) -> None:
        account = harness.new_account()
        result = await harness.backend.issue(
            account, new_password(), [MISSING, HOSTILE], expires_at=expiry()
        )
        assert result.granted == []
        assert {MISSING, HOSTILE} <= {r.name for r in result.refused}
        await harness.backend.revoke(account)
        assert account not in await harness.backend.accounts()

    @pytest.mark.parametrize(
        ("change", "error"),
        [
            ({"account": "Robert'); DROP TABLE students; --"}, ValueError),
            ({"account": ""}, ValueError),
            ({"password": ""}, ValueError),
            ({"tables": "patients"}, TypeError),
            ({"expires_at": datetime(2030, 1, 1)}, ValueError),  # naive on purpose
            ({"max_connections": 0}, ValueError),
            ({"max_connections": True}, ValueError),
            ({"statement_timeout_s": "5; DROP"}, ValueError),
        ],
    )
    async def test_bad_arguments_are_refused_before_anything_is_made(
        self, harness: Harness, change: dict[str, Any], error: type[Exception]
    ) -> None:
        account = harness.new_account()
        args: dict[str, Any] = {
            "account": account,
            "password": new_password(),
            "tables": [harness.granted],
            "expires_at": expiry(),
        } | change
        with pytest.raises(error):
            await harness.backend.issue(
                args.pop("account"), args.pop("password"), args.pop("tables"), **args
            )
        assert account not in await harness.backend.accounts()

    @pytest.mark.parametrize("account", ["", "secd_x`y", "a'@'%", "postgres; --", "x" * 40])
    async def test_revoke_refuses_a_bad_account_name(self, harness: Harness, account: str) -> None:
        with pytest.raises(ValueError, match="account"):
            await harness.backend.revoke(account)


# ---------------------------------------------------------------- memory


class _MemorySession(Session):
    def __init__(self, session: MemorySession) -> None:
        self._session = session

    async def rows(self, table: str) -> int | None:
        try:
            return len(self._session.read(table))
        except PermissionError:
            return None
        except ConnectionError:
            raise Ended from None

    async def close(self) -> None:
        self._session.close()


class MemoryHarness(Harness):
    """MemoryBackend standing in for a PostgreSQL database."""

    database = "contract"
    granted = "patients"
    other = "secrets"

    def __init__(self) -> None:
        super().__init__(lambda: account_name(new_run_id()))
        self.backend = self.memory = MemoryBackend(
            kind="postgres",
            database=self.database,
            tables={"patients": PATIENTS, "secrets": [(1, "launch")]},
        )

    async def login(self, account: str, password: str) -> Session:
        try:
            return _MemorySession(self.memory.connect(account, password))
        except PermissionError as exc:
            raise Denied(str(exc)) from None


class TestMemoryBackend(BackendContract):
    """The contract against MemoryBackend, plus what it promises beyond the contract."""

    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls) -> MemoryHarness:
        return MemoryHarness()

    async def test_logins_end_at_the_lease_like_valid_until(self, harness: MemoryHarness) -> None:
        account, password = harness.new_account(), new_password()
        lease = expiry()
        await harness.backend.issue(account, password, [harness.granted], expires_at=lease)
        harness.memory.connect(account, password, now=lease - timedelta(seconds=1)).close()
        with pytest.raises(PermissionError, match="expired"):
            harness.memory.connect(account, password, now=lease)
        await harness.backend.revoke(account)

    async def test_the_connection_limit_holds(self, harness: MemoryHarness) -> None:
        account, password = harness.new_account(), new_password()
        await harness.backend.issue(
            account, password, [harness.granted], expires_at=expiry(), max_connections=1
        )
        first = harness.memory.connect(account, password)
        with pytest.raises(PermissionError, match="too many connections"):
            harness.memory.connect(account, password)
        first.close()
        harness.memory.connect(account, password).close()
        await harness.backend.revoke(account)

    async def test_it_keeps_no_password(self, harness: MemoryHarness) -> None:
        account, password = harness.new_account(), new_password()
        await harness.backend.issue(account, password, [harness.granted], expires_at=expiry())
        assert password not in repr(vars(harness.memory._accounts[account]))
        await harness.backend.revoke(account)

    def test_it_answers_as_a_kind_secd_knows(self) -> None:
        assert MemoryBackend(kind="mysql").address().kind == "mysql"
        with pytest.raises(ValueError, match="unknown database kind"):
            MemoryBackend(kind="oracle")  # type: ignore[arg-type]


# ---------------------------------------------------------------- PostgreSQL


class _PgSession(Session):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def rows(self, table: str) -> int | None:
        try:
            return await self._conn.fetchval(f'SELECT count(*) FROM "{table}"')  # noqa: S608
        except asyncpg.InsufficientPrivilegeError:
            return None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError):
            raise Ended from None

    async def close(self) -> None:
        self._conn.terminate()


class PostgresHarness(Harness):
    """PostgresBackend on a fresh database of the machine's server, logged into over TCP."""

    granted = "patients"
    other = "secrets"

    def __init__(self, env: DbEnv) -> None:
        super().__init__(env.new_account)
        self.database = env.database
        self.backend = PostgresBackend(
            PostgresSettings(host=PG_HOST, port=PG_PORT, user=PG_USER, database=env.database)
        )

    async def login(self, account: str, password: str) -> Session:
        # A server that trusts local TCP logins (this machine's may) would let any password in;
        # the stored verifier says whether one that checks passwords would.
        admin = await pg_admin()
        try:
            stored = await admin.fetchval(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1", account
            )
        finally:
            await admin.close()
        if stored is None or not scram_matches(stored, password):
            raise Denied(f"password authentication failed for user {account}")
        try:
            return _PgSession(await pg_connect_as(account, password, self.database))
        except asyncpg.PostgresError as exc:
            raise Denied(str(exc)) from None


class TestPostgresBackend(BackendContract):
    """The contract against a real PostgreSQL server."""

    @pytest_asyncio.fixture(scope="class")
    @classmethod
    async def harness(cls, pg_env: DbEnv) -> AsyncIterator[PostgresHarness]:  # noqa: F811
        made = PostgresHarness(pg_env)
        yield made
        await made.backend.close()
        await made.backend.close()  # closing twice is fine


# ---------------------------------------------------------------- MariaDB

ER_TABLEACCESS_DENIED = 1142


class _MySession(Session):
    def __init__(self, conn: aiomysql.Connection) -> None:
        self._conn = conn

    async def rows(self, table: str) -> int | None:
        try:
            ((count,),) = await my_query(self._conn, f"SELECT count(*) FROM `{table}`")  # noqa: S608
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == ER_TABLEACCESS_DENIED:
                return None
            raise Ended from None
        except (pymysql.err.InterfaceError, ConnectionError, OSError):
            raise Ended from None
        return count

    async def close(self) -> None:
        self._conn.close()


class MariaDBHarness(Harness):
    """MariaDBBackend on a fresh database of the machine's server, logged into by its socket."""

    granted = "patients"
    other = "secrets"

    def __init__(self, env: DbEnv) -> None:
        super().__init__(env.new_account)
        self.database = env.database
        self.backend = MariaDBBackend(
            MariaDBSettings(host="localhost", user=MY_USER, socket=MY_SOCKET, database=env.database)
        )

    async def login(self, account: str, password: str) -> Session:
        try:
            return _MySession(await my_connect_as(account, password, self.database))
        except pymysql.err.OperationalError as exc:
            raise Denied(str(exc)) from None


class TestMariaDBBackend(BackendContract):
    """The contract against a real MariaDB server."""

    @pytest_asyncio.fixture(scope="class")
    @classmethod
    async def harness(cls, my_env: DbEnv) -> AsyncIterator[MariaDBHarness]:  # noqa: F811
        made = MariaDBHarness(my_env)
        yield made
        await made.backend.close()
        await made.backend.close()


# ---------------------------------------------------------------- Neo4j

NEO4J_URI_VAR = "SECD_TEST_NEO4J_URI"
NEO4J_URI = os.environ.get(NEO4J_URI_VAR)
NEO4J_USER = os.environ.get("SECD_TEST_NEO4J_USER", "neo4j")
NEO4J_PASSWORD = os.environ.get("SECD_TEST_NEO4J_PASSWORD", "")
NEO4J_DATABASE = os.environ.get("SECD_TEST_NEO4J_DATABASE", "neo4j")
NEO4J_ERRORS = (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError)


async def neo4j_admin(query: str, database: str = NEO4J_DATABASE, **params: Any) -> list[dict]:
    """One statement as the test server's administrator."""
    async with neo4j.AsyncGraphDatabase.driver(
        NEO4J_URI, auth=(NEO4J_USER, NEO4J_PASSWORD)
    ) as driver:
        records, _, _ = await driver.execute_query(query, params, database_=database)
        return [r.data() for r in records]


class _Neo4jSession(Session):
    def __init__(self, driver: neo4j.AsyncDriver, session: neo4j.AsyncSession) -> None:
        self._driver, self._session = driver, session

    async def rows(self, table: str) -> int | None:
        query = f"MATCH (n:{nb.quote_label(table)}) RETURN count(n) AS c"
        try:
            count = (await (await self._session.run(query)).single())["c"]
        except NEO4J_ERRORS:
            # Cut off, or (the driver reconnects by itself) no longer allowed to log in.
            raise Ended from None
        # Neo4j hides nodes an account may not traverse rather than refusing the query.
        return count or None

    async def close(self) -> None:
        with suppress(*NEO4J_ERRORS):
            await self._session.close()
        with suppress(*NEO4J_ERRORS):
            await self._driver.close()


class Neo4jHarness(Harness):
    """Neo4jBackend on the server at SECD_TEST_NEO4J_URI; labels stand for tables."""

    def __init__(self, edition: str, token: str) -> None:
        self.accounts: list[str] = []
        super().__init__(self._new_account)
        self.edition = edition
        self.database = NEO4J_DATABASE
        self.granted = f"SecdContractPatient_{token}"
        self.other = f"SecdContractSecret_{token}"
        # Community has no per-label roles: the backend issues only with accept_full_read.
        self.confines_reads = edition == "enterprise"
        self.backend = Neo4jBackend(
            Neo4jSettings(
                uri=NEO4J_URI or "",
                user=NEO4J_USER,
                password=NEO4J_PASSWORD,
                database=NEO4J_DATABASE,
                accept_full_read=not self.confines_reads,
            )
        )

    def _new_account(self) -> str:
        name = account_name(new_run_id())
        self.accounts.append(name)
        return name

    async def login(self, account: str, password: str) -> Session:
        driver = neo4j.AsyncGraphDatabase.driver(NEO4J_URI, auth=(account, password))
        session = driver.session(database=self.database)
        try:
            await (await session.run("RETURN 1")).consume()
        except neo4j.exceptions.AuthError as exc:
            await session.close()
            await driver.close()
            raise Denied(str(exc)) from None
        return _Neo4jSession(driver, session)


class TestNeo4jBackend(BackendContract):
    """The contract against a real Neo4j server, when SECD_TEST_NEO4J_URI names one."""

    @pytest_asyncio.fixture(scope="class")
    @classmethod
    async def harness(cls) -> AsyncIterator[Neo4jHarness]:
        if not NEO4J_URI:
            pytest.skip(f"{NEO4J_URI_VAR} is not set: no Neo4j server to hold to the contract")
        rows = await neo4j_admin(nb.COMPONENTS)
        made = Neo4jHarness(str(rows[0]["edition"]).lower(), secrets.token_hex(4))
        await neo4j_admin(
            f"UNWIND range(1, {len(PATIENTS)}) AS i"
            f" CREATE (:{nb.quote_label(made.granted)} {{id: i}})"
            f" CREATE (:{nb.quote_label(made.other)} {{code: 'launch'}})"
        )
        try:
            yield made
        finally:
            await made.backend.close()
            for account in made.accounts:
                await neo4j_admin("DROP USER $u IF EXISTS", "system", u=account)
                if made.edition == "enterprise":
                    await neo4j_admin("DROP ROLE $r IF EXISTS", "system", r=nb.role_name(account))
            for label in (made.granted, made.other):
                await neo4j_admin(f"MATCH (n:{nb.quote_label(label)}) DETACH DELETE n")
