"""MariaDB (and MySQL-compatible servers): one 'localhost' user per run, SELECT on granted tables.

Accounts are bound to host 'localhost', so jobs reach them only through the server's Unix socket.
Each has a connection limit (MAX_USER_CONNECTIONS) and a statement time limit
(MAX_STATEMENT_TIME), and SELECT on its granted tables only. MariaDB 10.11 added grants to
PUBLIC, which every account inherits: an issue is refused while PUBLIC holds anything on the
database (or globally), so an account never gets more than the tables it lists.
Account-management statements cannot take bind parameters; they only hold identifiers that were
validated and then quoted, integers, and the native-password hash secd computed itself.

Neighbour replay (`issue_replay`): a run's second account, `secd_<run>_n`, reads each granted
table through a view of the same name in a database of its own name, which the executor gives
the replay job as its DB_NAME (MariaDB has no search_path, so unqualified names resolve in the
connection's default database). Each view leaves out a few rows chosen at random: the server
itself copies their keys (CREATE TABLE ... AS SELECT ... ORDER BY RAND() LIMIT k) into a second
database, `<account>_hidden`, on which the account holds nothing, so no key passes through secd
or sits in SQL text, and a view's definition names the hidden table, never a key. The views are
SQL SECURITY DEFINER (the administrator), so the account needs SELECT on the views only; and
ALGORITHM=TEMPTABLE, MariaDB's only barrier: a merged view would evaluate the account's own
conditions (a user-variable assignment in WHERE) on the hidden rows too. A table without a
one-column primary key has whole rows copied instead, and its view leaves out every row equal
(NULL-safe) to one of them. Both databases go with the account on revoke.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime

import aiomysql
import msgspec
import pymysql

from secd_shared.dbkind import DbKind, facts
from secd_shared.events import DatabaseAddress, Refusal

from ..accounts import ACCOUNT_PATTERN, is_replay_account, mysql_native_hash
from .base import (
    BackendError,
    IssueResult,
    check_account,
    check_issue_args,
    check_replay_args,
    redact,
    split_tables,
)

__all__ = ["ACCOUNT_HOST", "MariaDBBackend", "MariaDBSettings", "hidden_database", "quote_ident"]

log = logging.getLogger(__name__)

ACCOUNT_HOST = "localhost"
_READABLE = {"BASE TABLE", "VIEW", "SYSTEM VERSIONED"}
_NATIVE_HASH = re.compile(r"\*[0-9A-F]{40}")
_ER_NO_SUCH_THREAD = 1094
_PUBLIC = "'PUBLIC'@''"
# What PUBLIC holds globally, on the database (grants may use LIKE patterns), or on its tables.
_PUBLIC_GRANTS = (
    "SELECT '*.*', PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES"
    " WHERE GRANTEE = %(public)s AND PRIVILEGE_TYPE <> 'USAGE'"
    " UNION ALL SELECT CONCAT(TABLE_SCHEMA, '.*'), PRIVILEGE_TYPE"
    " FROM information_schema.SCHEMA_PRIVILEGES"
    " WHERE GRANTEE = %(public)s AND %(db)s LIKE TABLE_SCHEMA"
    " UNION ALL SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME), PRIVILEGE_TYPE"
    " FROM information_schema.TABLE_PRIVILEGES"
    " WHERE GRANTEE = %(public)s AND TABLE_SCHEMA = %(db)s"
    " UNION ALL SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME, '.', COLUMN_NAME), PRIVILEGE_TYPE"
    " FROM information_schema.COLUMN_PRIVILEGES"
    " WHERE GRANTEE = %(public)s AND TABLE_SCHEMA = %(db)s"
)
_KILL_WAIT_S = 5.0
_HIDDEN_SUFFIX = "_hidden"
# The columns of a table's primary key (exact names are compared in Python: information_schema
# may compare case-insensitively).
_PRIMARY_KEY = (
    "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
    " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY'"
)
# Replay databases by name: a view database and a hidden one, either perhaps left alone by an
# interrupted issue or revoke.
_REPLAY_DATABASES = (
    "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA"
    " WHERE SCHEMA_NAME LIKE 'secd\\_r%%\\_n' OR SCHEMA_NAME LIKE 'secd\\_r%%\\_n\\_hidden'"
)


class MariaDBSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How secd reaches MariaDB as an administrator, and the database it grants tables in."""

    database: str
    host: str = "127.0.0.1"
    port: int = facts("mysql").default_port
    user: str = facts("mysql").default_admin
    password: str | None = None
    socket: str | None = None

    def __repr__(self) -> str:
        """Everything but the password."""
        return (
            f"MariaDBSettings(database={self.database!r}, host={self.host!r}, port={self.port!r},"
            f" user={self.user!r}, socket={self.socket!r},"
            f" password={'***' if self.password else None})"
        )


def quote_ident(name: str) -> str:
    """A MariaDB quoted identifier: backticks around, inner backticks doubled."""
    if not name or "\x00" in name:
        raise ValueError("identifier must be non-empty and hold no NUL")
    return "`" + name.replace("`", "``") + "`"


class _QuietCursor(aiomysql.Cursor):  # type: ignore[misc]  # aiomysql has no type hints
    """A cursor that logs server warnings instead of raising Python warnings for them."""

    async def _show_warnings(self, conn: aiomysql.Connection) -> None:
        # ALTER USER IF EXISTS on a missing user leaves error 1133 in the diagnostics area even
        # with sql_notes off; a repeated revoke expects exactly that, so it is not worth a warning.
        rows = await conn.show_warnings()
        for row in rows or ():
            log.debug("mariadb warning", extra={"code": row[1], "detail": str(row[2])})


def hidden_database(account: str) -> str:
    """The database holding the keys a replay account's views leave out (never readable by it)."""
    return check_account(account) + _HIDDEN_SUFFIX


def _user(account: str) -> str:
    # check_account allows only [a-z0-9_], so the literal needs no escaping under any sql_mode.
    return f"'{check_account(account)}'@'{ACCOUNT_HOST}'"


class MariaDBBackend:
    """Issues and revokes temporary MariaDB users with SELECT on tables of one database."""

    kind: DbKind = "mysql"

    def __init__(self, settings: MariaDBSettings, *, pool_size: int = 2) -> None:
        """Remember the settings; the admin pool opens on first use."""
        self.settings = settings
        self._pool_size = pool_size
        self._pool: aiomysql.Pool | None = None
        self._lock = asyncio.Lock()

    def address(self) -> DatabaseAddress:
        """Host/port and the socket; accounts are 'localhost', so jobs must use the socket."""
        s = self.settings
        return DatabaseAddress(
            kind=self.kind, database=s.database, host=s.host, port=s.port, socket=s.socket
        )

    async def _get_pool(self) -> aiomysql.Pool:
        async with self._lock:
            if self._pool is None:
                s = self.settings
                try:
                    self._pool = await aiomysql.create_pool(
                        host=s.host,
                        port=s.port,
                        unix_socket=s.socket,
                        user=s.user,
                        password=s.password or "",
                        db=s.database,
                        autocommit=True,
                        charset="utf8mb4",
                        # IF [NOT] EXISTS answer with notes; as Python warnings they are noise.
                        init_command="SET SESSION sql_notes = 0",
                        minsize=1,
                        maxsize=self._pool_size,
                    )
                except (OSError, pymysql.MySQLError) as exc:
                    raise BackendError(
                        f"cannot reach MariaDB database {s.database!r} as {s.user!r}: "
                        + redact(str(exc), s.password or "")
                    ) from None
            return self._pool

    async def close(self) -> None:
        """Close the admin pool, if it was opened."""
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    async def issue(
        self,
        account: str,
        password: str,
        tables: list[str],
        *,
        expires_at: datetime,
        max_connections: int = 4,
        statement_timeout_s: int | None = None,
    ) -> IssueResult:
        """Create or reset `account` with SELECT on existing `tables`; unlocked only once granted.

        MariaDB has no VALID UNTIL: `expires_at` is checked but enforced by revoke alone.
        """
        return await self._issue(
            account,
            password,
            tables,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
            hide_rows=0,
        )

    async def issue_replay(
        self,
        account: str,
        password: str,
        tables: list[str],
        *,
        hide_rows: int,
        expires_at: datetime,
        max_connections: int = 4,
        statement_timeout_s: int | None = None,
    ) -> IssueResult:
        """Create or reset a replay `account`: as `issue`, but it reads each table through a view,
        in the database of its own name, that leaves out `hide_rows` random rows (see the
        module docstring); the replay job must connect to that database."""
        check_replay_args(account, hide_rows)
        return await self._issue(
            account,
            password,
            tables,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
            hide_rows=hide_rows,
        )

    async def _issue(
        self,
        account: str,
        password: str,
        tables: list[str],
        *,
        expires_at: datetime,
        max_connections: int,
        statement_timeout_s: int | None,
        hide_rows: int,
    ) -> IssueResult:
        check_issue_args(
            account,
            password,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
        )
        wanted, refused = split_tables(tables)
        native = mysql_native_hash(password)
        if _NATIVE_HASH.fullmatch(native) is None:
            raise BackendError("internal: native password hash has an unexpected shape")
        user = _user(account)
        database = self.settings.database
        limits = (
            f"MAX_USER_CONNECTIONS {int(max_connections)}"
            f" MAX_STATEMENT_TIME {int(statement_timeout_s or 0)}"
        )
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn, conn.cursor(_QuietCursor) as cur:
                await self._refuse_public_grants(cur, database)
                if hide_rows:
                    # PUBLIC's grants on the replay databases would reach the hidden keys.
                    await self._refuse_public_grants(cur, account)
                    await self._refuse_public_grants(cur, hidden_database(account))
                granted = await self._existing_tables(cur, database, wanted, refused)
                # Created locked: a fresh or half-reset account cannot be used until the last
                # statement below has set its grants, password and limits together.
                await cur.execute(
                    f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY PASSWORD '{native}'"
                    f" WITH {limits} ACCOUNT LOCK"
                )
                await cur.execute(f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user}")
                if hide_rows:
                    await self._replay_views(cur, account, granted, hide_rows)
                for table in granted:
                    # A replay account reads the views of its own database, never the tables.
                    where = account if hide_rows else database
                    await cur.execute(
                        f"GRANT SELECT ON {quote_ident(where)}.{quote_ident(table)} TO {user}"
                    )
                await cur.execute(
                    f"ALTER USER {user} IDENTIFIED BY PASSWORD '{native}' WITH {limits}"
                    " ACCOUNT UNLOCK"
                )
        except (pymysql.MySQLError, OSError) as exc:
            raise BackendError(
                f"issuing {account} failed: {type(exc).__name__}: "
                + redact(str(exc), password, native)
            ) from None
        log.info(
            "issued mariadb account",
            extra={"account": account, "granted": granted, "refused": len(refused)},
        )
        return IssueResult(granted=granted, refused=refused)

    async def _replay_views(
        self, cur: aiomysql.Cursor, account: str, granted: list[str], hide_rows: int
    ) -> None:
        """The replay account's database of views and its hidden keys, made afresh."""
        source_db = quote_ident(self.settings.database)
        views, hidden = quote_ident(account), quote_ident(hidden_database(account))
        await self._drop_replay_databases(cur, account)
        await cur.execute(f"CREATE DATABASE {views}")
        await cur.execute(f"CREATE DATABASE {hidden}")
        for table in granted:
            name = quote_ident(table)
            source, keys = f"{source_db}.{name}", f"{hidden}.{name}"
            key = await self._primary_key(cur, table)
            # Quoted identifiers and an int only; the server picks the rows and keeps them.
            if key is not None:
                column = quote_ident(key)
                await cur.execute(
                    f"CREATE TABLE {keys} AS SELECT {column} AS `key` FROM {source}"  # noqa: S608
                    f" ORDER BY RAND() LIMIT {int(hide_rows)}"
                )
                keep = f"SELECT * FROM {source} WHERE {column} NOT IN (SELECT `key` FROM {keys})"  # noqa: S608
            else:
                # No one column names a row: whole rows are kept aside and matched NULL-safely
                # (a duplicate of a left-out row is left out too).
                await cur.execute(
                    f"CREATE TABLE {keys} AS SELECT * FROM {source}"  # noqa: S608
                    f" ORDER BY RAND() LIMIT {int(hide_rows)}"
                )
                same = " AND ".join(
                    f"s.{quote_ident(c)} <=> h.{quote_ident(c)}"
                    for c in await self._columns(cur, hidden_database(account), table)
                )
                keep = (
                    f"SELECT * FROM {source} AS s"  # noqa: S608
                    f" WHERE NOT EXISTS (SELECT 1 FROM {keys} AS h WHERE {same})"
                )
            # TEMPTABLE: the account's conditions run on the view's rows only (see above).
            await cur.execute(
                f"CREATE ALGORITHM = TEMPTABLE DEFINER = CURRENT_USER SQL SECURITY DEFINER"
                f" VIEW {views}.{name} AS {keep}"
            )

    async def _primary_key(self, cur: aiomysql.Cursor, table: str) -> str | None:
        """The column of `table`'s primary key when it has exactly one; None otherwise."""
        database = self.settings.database
        await cur.execute(_PRIMARY_KEY, (database, table))
        columns = [c for s, t, c in await cur.fetchall() if (s, t) == (database, table)]
        return columns[0] if len(columns) == 1 else None

    @staticmethod
    async def _columns(cur: aiomysql.Cursor, database: str, table: str) -> list[str]:
        await cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (database, table),
        )
        columns = [c for s, t, c in await cur.fetchall() if (s, t) == (database, table)]
        if not columns:
            raise BackendError(f"internal: the hidden rows of {table} have no columns")
        return columns

    @staticmethod
    async def _drop_replay_databases(cur: aiomysql.Cursor, account: str) -> None:
        # Dropping a database leaves grants on its tables behind; DROP USER takes those.
        if is_replay_account(account):
            await cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(account)}")
            await cur.execute(f"DROP DATABASE IF EXISTS {quote_ident(hidden_database(account))}")

    @staticmethod
    async def _refuse_public_grants(cur: aiomysql.Cursor, database: str) -> None:
        # Seen only when the admin may read the grant tables (root can); see docs/operator.md.
        await cur.execute(_PUBLIC_GRANTS, {"public": _PUBLIC, "db": database})
        rows = await cur.fetchall()
        if rows:
            what = ", ".join(f"{privilege} on {target}" for target, privilege in rows[:10])
            raise BackendError(
                f"MariaDB grants PUBLIC {what}, which every account inherits; revoke it"
                " (REVOKE ... FROM PUBLIC) before secd issues accounts on database"
                f" {database}"
            )

    @staticmethod
    async def _existing_tables(
        cur: aiomysql.Cursor, database: str, wanted: list[str], refused: list[Refusal]
    ) -> list[str]:
        if not wanted:
            return []
        # One bound list: split_tables admits no commas, so FIND_IN_SET cannot be fooled.
        await cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = %s AND FIND_IN_SET(TABLE_NAME, %s) > 0",
            (database, ",".join(wanted)),
        )
        # information_schema compares case-insensitively; grants must name the exact table.
        kinds = {name: kind for schema, name, kind in await cur.fetchall() if schema == database}
        granted: list[str] = []
        for table in wanted:
            kind = kinds.get(table)
            if kind in _READABLE:
                granted.append(table)
            elif kind is None:
                reason = f"table {table} does not exist in database {database}"
                refused.append(Refusal(name=table, reason=reason))
            else:
                reason = f"{table} is a {kind.lower()}, not a table, in database {database}"
                refused.append(Refusal(name=table, reason=reason))
        return granted

    async def accounts(self) -> list[str]:
        """Every account secd issued on this server that still exists (for the sweeper)."""
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(
                    "SELECT DISTINCT User FROM mysql.user WHERE User LIKE 'secd\\_r%%'"
                )
                names = {r[0] for r in await cur.fetchall()}
                # A replay database without its account (an interrupted issue or revoke) is
                # listed by the account's name, so that the sweeper's revoke drops it.
                await cur.execute(_REPLAY_DATABASES)
                names.update(r[0].removesuffix(_HIDDEN_SUFFIX) for r in await cur.fetchall())
        except (pymysql.MySQLError, OSError) as exc:
            raise BackendError(f"listing accounts failed: {type(exc).__name__}") from None
        return sorted(n for n in names if ACCOUNT_PATTERN.fullmatch(n))

    async def revoke(self, account: str) -> None:
        """Lock `account`, kill its connections, then drop it (and a replay account's two
        databases); every step is safe to repeat."""
        user = _user(account)
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn, conn.cursor(_QuietCursor) as cur:
                await cur.execute(f"ALTER USER IF EXISTS {user} ACCOUNT LOCK")
                await self._kill_sessions(cur, account)
                await cur.execute(f"DROP USER IF EXISTS {user}")
                # A connection that authenticated just before the lock is killed here.
                await self._kill_sessions(cur, account)
                await self._drop_replay_databases(cur, account)
        except (pymysql.MySQLError, OSError) as exc:
            raise BackendError(f"revoking {account} failed: {type(exc).__name__}: {exc}") from None
        log.info("revoked mariadb account", extra={"account": account})

    async def _kill_sessions(self, cur: aiomysql.Cursor, account: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _KILL_WAIT_S
        while True:
            # By user name alone: secd makes one host per name, and any host's session must go.
            await cur.execute(
                "SELECT ID, COMMAND FROM information_schema.PROCESSLIST WHERE USER = %s", [account]
            )
            rows = await cur.fetchall()
            if not rows:
                return
            for thread_id, command in rows:
                if command == "Killed":
                    continue
                try:
                    await cur.execute(f"KILL HARD CONNECTION {int(thread_id)}")
                except pymysql.MySQLError as exc:
                    # The connection may have ended on its own between listing and killing.
                    if exc.args and exc.args[0] == _ER_NO_SUCH_THREAD:
                        continue
                    raise
            if loop.time() > deadline:
                raise BackendError(f"connections of {account} did not end in {_KILL_WAIT_S}s")
            await asyncio.sleep(0.005)
