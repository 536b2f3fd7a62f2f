"""PostgreSQL: a NOINHERIT login role per run, SELECT on granted tables of schema public.

Least privilege: before its first issue the backend takes PUBLIC's default CONNECT and TEMPORARY
on its database, CREATE on schema public and large-object creation away (see `harden`), so a
run's role holds CONNECT, USAGE on public and SELECT on its tables, nothing else; every issue checks
that with the server's own privilege functions before committing. Other databases of the server
that still let PUBLIC connect are reported once (`open_databases`); jobs reach only the run's
database anyway, because the executor's relay admits no other.

Utility statements (CREATE/ALTER/DROP ROLE, GRANT) cannot take bind parameters, so they only ever
hold identifiers that were validated and then quoted, integers, and literals secd made itself.

Neighbour replay (`issue_replay`): a run's second account reads, in place of each granted table,
a view of it in a schema of the account's own name (its search_path) that leaves out a few rows
chosen at random. The keys of those rows are copied by the server itself (CREATE TABLE AS ...
ORDER BY random()) into a second schema, `<account>_hidden`, that the account cannot use: no key
ever passes through secd or sits in SQL text, and a view's definition (which every role can read
in pg_views) names the hidden table, never a key. Views run with their owner's rights, so the
account needs SELECT on the views only; `security_barrier` keeps the account's own conditions
from being evaluated on the hidden rows first. Both schemas go with the account on revoke.

Canary rows (`issue_with_canaries`, secd_shared.canaries): the same per-run views, in the same
schema, read each granted table with the run's synthetic patients added (UNION ALL) where the
table has a column that gives one away. The rows sit in a third schema, `<account>_canaries`,
that the account cannot use, in a copy of each table's columns (CREATE TABLE AS ... WITH NO DATA)
filled by INSERT ... json_populate_record($1): the values go in as one bind parameter, converted
by the server by each column's type, and never sit in SQL text or a view's definition. A replay
account's views leave rows out of the table and then add the same canaries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec

from secd_shared.canaries import CanaryRow, Column, ColumnKind, canary_values
from secd_shared.dbkind import DbKind, facts
from secd_shared.events import DatabaseAddress, Refusal

from ..accounts import ACCOUNT_PATTERN, scram_sha256_verifier
from .base import (
    BackendError,
    IssueResult,
    check_account,
    check_issue_args,
    check_replay_args,
    redact,
    split_tables,
)

__all__ = [
    "PostgresBackend",
    "PostgresSettings",
    "canaries_schema",
    "hidden_schema",
    "quote_ident",
]

log = logging.getLogger(__name__)

SCHEMA = "public"
# Tables, partitioned tables, views and materialized views can be read with SELECT alone.
_READABLE = {"r": "table", "p": "table", "v": "view", "m": "view"}
_KINDS = {"S": "sequence", "i": "index", "I": "index", "c": "type", "f": "foreign table"}
_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
_TERMINATE_WAIT_S = 5.0
# Advisory lock classes (first keys): revocations of one account take turns (the second key is
# the name's hash); every change to grants takes turns too (second key 0), because GRANT and DROP
# OWNED rewrite the same catalog rows (the database's and the schema's ACL) for every account, and
# PostgreSQL fails one of two at once with "tuple concurrently updated".
_ACCOUNT_LOCK = 0x73656364
_GRANTS_LOCK = 0x73656365
_GRANTS_TURN = "SELECT pg_catalog.pg_advisory_xact_lock($1, 0)"
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# The one column that identifies a row of a table: its single-column primary key (by name).
_PRIMARY_KEY = """
SELECT a.attname::text FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
WHERE i.indisprimary AND i.indnatts = 1 AND n.nspname = $1 AND c.relname = $2
"""
_HIDDEN_SUFFIX = "_hidden"
_CANARIES_SUFFIX = "_canaries"
# A table's columns, their type's category and name, and the type modifier (lengths, precision).
_COLUMNS = """
SELECT a.attname::text AS name, t.typcategory::text AS category, t.typname::text AS type,
       a.atttypmod AS typmod
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_INTEGER_MAX = {"int2": 2**15 - 1, "int4": 2**31 - 1, "int8": 2**63 - 1}
# Large objects are storage any role may create by default: a write path into the database.
_LARGE_OBJECT_CREATORS = (
    "pg_catalog.lo_creat(integer)",
    "pg_catalog.lo_create(oid)",
    "pg_catalog.lo_from_bytea(oid, bytea)",
    "pg_catalog.lo_import(text)",
    "pg_catalog.lo_import(text, oid)",
)
# What a role can do beyond SELECT on the granted tables of schema public ($2, $3): other
# relations, any write, CREATE on a schema, CREATE or TEMPORARY on the database.
_EXTRA_PRIVILEGES = """
SELECT n.nspname::text AS schema, c.relname::text AS name, c.relkind::text AS kind
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND has_schema_privilege($1, n.oid, 'USAGE')
  AND CASE WHEN c.relkind = 'S'
        THEN has_sequence_privilege($1, c.oid, 'USAGE,SELECT,UPDATE')
      WHEN c.relkind IN ('r', 'p', 'v', 'm', 'f')
        THEN has_table_privilege($1, c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
          OR (has_any_column_privilege($1, c.oid, 'SELECT')
              AND NOT (n.nspname = $2 AND c.relname = ANY($3::text[])))
      ELSE false END
UNION ALL
SELECT NULL, n.nspname::text, 'schema' FROM pg_catalog.pg_namespace n
WHERE has_schema_privilege($1, n.oid, 'CREATE')
UNION ALL
SELECT NULL, current_database()::text, 'database'
WHERE has_database_privilege($1, current_database(), 'CREATE,TEMPORARY')
ORDER BY 1, 2
"""


class PostgresSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How secd reaches PostgreSQL as an administrator, and the database it grants tables in."""

    database: str
    host: str = "127.0.0.1"
    port: int = facts("postgres").default_port
    user: str = facts("postgres").default_admin
    password: str | None = None
    socket_dir: str | None = None
    # A job may hold a snapshot open between fetches, but not for so long that it blocks vacuum.
    idle_in_transaction_timeout_s: int = 900

    def __repr__(self) -> str:
        """Everything but the password."""
        return (
            f"PostgresSettings(database={self.database!r}, host={self.host!r}, port={self.port!r},"
            f" user={self.user!r}, socket_dir={self.socket_dir!r},"
            f" password={'***' if self.password else None})"
        )


def quote_ident(name: str) -> str:
    """A PostgreSQL quoted identifier: double quotes around, inner double quotes doubled."""
    if not name or "\x00" in name:
        raise ValueError("identifier must be non-empty and hold no NUL")
    return '"' + name.replace('"', '""') + '"'


def hidden_schema(account: str) -> str:
    """The schema that holds the keys a replay account's views leave out (never readable by it)."""
    return account + _HIDDEN_SUFFIX


def canaries_schema(account: str) -> str:
    """The schema that holds the canary rows an account's views add (never readable by it)."""
    return account + _CANARIES_SUFFIX


def _column(name: str, category: str, type_name: str, typmod: int) -> Column:
    """A column as secd_shared.canaries maps fields to it, from the server's catalogue."""
    kind: ColumnKind = "other"
    limit: int | None = None
    if category == "S":
        kind = "text"
        # varchar(n) and char(n) carry n + 4; text and unbounded varchar carry -1.
        limit = typmod - 4 if type_name in ("varchar", "bpchar") and typmod >= 4 else None
    elif type_name in _INTEGER_MAX:
        kind, limit = "integer", _INTEGER_MAX[type_name]
    elif type_name == "numeric":
        kind = "integer"
        if typmod >= 4:
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            limit = 10 ** max(0, precision - scale) - 1
    elif type_name in ("date", "timestamp", "timestamptz"):
        kind = "date"
    return Column(name=name, kind=kind, limit=limit)


def _literal(text: str) -> str:
    # Only for strings secd built itself (verifier, timestamp); checked again so a change there
    # cannot open an injection here.
    if "'" in text or "\\" in text or "\x00" in text:
        raise ValueError("refusing to quote a literal holding quotes or backslashes")
    return "'" + text + "'"


class PostgresBackend:
    """Issues and revokes temporary PostgreSQL roles in one database."""

    kind: DbKind = "postgres"

    def __init__(self, settings: PostgresSettings, *, pool_size: int = 2) -> None:
        """Remember the settings; the admin pool opens on first use."""
        self.settings = settings
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self.open_databases: list[str] = []
        self._hardened = False

    def address(self) -> DatabaseAddress:
        """Host/port, and the socket file when a socket directory is configured."""
        s = self.settings
        socket = f"{s.socket_dir.rstrip('/')}/.s.PGSQL.{s.port}" if s.socket_dir else None
        return DatabaseAddress(
            kind=self.kind, database=s.database, host=s.host, port=s.port, socket=socket
        )

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                s = self.settings
                try:
                    self._pool = await asyncpg.create_pool(
                        host=s.socket_dir or s.host,
                        port=s.port,
                        user=s.user,
                        password=s.password,
                        database=s.database,
                        min_size=1,
                        max_size=self._pool_size,
                        server_settings={"application_name": "secd-credentials"},
                    )
                except _DB_ERRORS as exc:
                    raise BackendError(
                        f"cannot reach PostgreSQL database {s.database!r} as {s.user!r}: "
                        + redact(str(exc), s.password or "")
                    ) from None
            return self._pool

    async def _hardened_pool(self) -> asyncpg.Pool:
        # Only issuing needs it: revocation and the sweeper must work even where it fails.
        pool = await self._get_pool()
        async with self._lock:
            if not self._hardened:
                await self.harden(pool)
                self._hardened = True
        return pool

    async def harden(self, pool: asyncpg.Pool) -> None:
        """Take PUBLIC's defaults away on this database; note other databases PUBLIC may enter.

        Changes the database's grants for every role, which is what a database reserved for
        sensitive data wants: other roles that should connect need their own CONNECT grant.
        Every statement is idempotent, and it runs once per backend, before its first issue.
        """
        database = quote_ident(self.settings.database)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(_GRANTS_TURN, _GRANTS_LOCK)
                await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC")
                # Already so on PostgreSQL 15 and later; older servers let PUBLIC create here.
                await conn.execute(f"REVOKE CREATE ON SCHEMA {quote_ident(SCHEMA)} FROM PUBLIC")
                functions = ", ".join(_LARGE_OBJECT_CREATORS)
                await conn.execute(f"REVOKE EXECUTE ON FUNCTION {functions} FROM PUBLIC")
                # A REVOKE by a role without the grant only warns: check what PUBLIC holds now.
                left = await conn.fetchval(
                    "SELECT has_database_privilege('public', current_database(), 'CONNECT')"
                    " OR has_database_privilege('public', current_database(), 'TEMPORARY')"
                    " OR has_schema_privilege('public', $1, 'CREATE')"
                    " OR bool_or(has_function_privilege('public', f::regprocedure, 'EXECUTE'))"
                    " FROM unnest($2::text[]) AS f",
                    SCHEMA,
                    list(_LARGE_OBJECT_CREATORS),
                )
                if left:
                    raise asyncpg.InsufficientPrivilegeError("PUBLIC kept some of its privileges")
                rows = await conn.fetch(
                    "SELECT datname::text AS name FROM pg_catalog.pg_database"
                    " WHERE datallowconn AND datname <> current_database()"
                    " AND has_database_privilege('public', oid, 'CONNECT') ORDER BY 1"
                )
        except _DB_ERRORS as exc:
            raise BackendError(
                f"cannot take PUBLIC's default privileges away on PostgreSQL database"
                f" {self.settings.database!r} ({type(exc).__name__}: {exc}); connect as its owner"
                " or a superuser"
            ) from None
        self.open_databases = [row["name"] for row in rows]
        if self.open_databases:
            log.warning(
                "PostgreSQL databases %s let every role connect (PUBLIC CONNECT); jobs reach only"
                " %s through the executor's relay, but anything else that reaches the server as a"
                " run's account could read their catalogues: REVOKE CONNECT ON DATABASE ... FROM"
                " PUBLIC on each",
                ", ".join(self.open_databases),
                self.settings.database,
            )

    async def close(self) -> None:
        """Close the admin pool, if it was opened."""
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

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
        """Create or reset `account`: login until `expires_at`, SELECT on existing `tables` only."""
        return await self._issue(
            account,
            password,
            tables,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
            hide_rows=0,
            canaries=(),
        )

    async def issue_with_canaries(
        self,
        account: str,
        password: str,
        tables: list[str],
        *,
        canaries: Sequence[CanaryRow],
        hide_rows: int = 0,
        expires_at: datetime,
        max_connections: int = 4,
        statement_timeout_s: int | None = None,
    ) -> IssueResult:
        """As `issue` (or, with `hide_rows`, `issue_replay`), but each granted table with a
        column a canary can fill reads with the `canaries` added; `planted` names those tables."""
        check_replay_args(account, hide_rows, least=0)
        if any(not isinstance(row, CanaryRow) for row in canaries):
            raise TypeError("canaries must be CanaryRow values (secd_shared.canaries)")
        return await self._issue(
            account,
            password,
            tables,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
            hide_rows=hide_rows,
            canaries=tuple(canaries),
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
        """Create or reset a replay `account`: as `issue`, but each table it reads is a view
        that leaves out `hide_rows` rows chosen at random (see the module docstring)."""
        check_replay_args(account, hide_rows)
        return await self._issue(
            account,
            password,
            tables,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
            hide_rows=hide_rows,
            canaries=(),
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
        canaries: tuple[CanaryRow, ...],
    ) -> IssueResult:
        check_issue_args(
            account,
            password,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
        )
        wanted, refused = split_tables(tables)
        verifier = scram_sha256_verifier(password)
        if _VERIFIER.fullmatch(verifier) is None:
            raise BackendError("internal: SCRAM verifier has an unexpected shape")
        valid_until = expires_at.astimezone(UTC).isoformat()
        role = quote_ident(account)
        database = self.settings.database
        pool = await self._hardened_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                # One transaction: a crash part-way leaves no half-made role behind.
                await conn.execute(_GRANTS_TURN, _GRANTS_LOCK)
                found = await conn.fetch(
                    "SELECT c.relname::text AS name, c.relkind::text AS kind"
                    " FROM pg_catalog.pg_class c"
                    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = $1 AND c.relname = ANY($2::text[])",
                    SCHEMA,
                    wanted,
                )
                kinds = {row["name"]: row["kind"] for row in found}
                granted: list[str] = []
                for table in wanted:
                    kind = kinds.get(table)
                    if kind in _READABLE:
                        granted.append(table)
                    elif kind is None:
                        reason = f"table {table} does not exist in database {database}"
                        refused.append(Refusal(name=table, reason=reason))
                    else:
                        what = _KINDS.get(kind, "relation")
                        reason = f"{table} is a {what}, not a table, in database {database}"
                        refused.append(Refusal(name=table, reason=reason))

                existing = await conn.fetchrow(
                    "SELECT oid, rolsuper, rolreplication, rolbypassrls"
                    " FROM pg_catalog.pg_roles WHERE rolname = $1",
                    account,
                )
                attributes = (
                    "LOGIN NOINHERIT NOCREATEDB NOCREATEROLE"
                    f" CONNECTION LIMIT {int(max_connections)}"
                    f" VALID UNTIL {_literal(valid_until)}"
                    f" PASSWORD {_literal(verifier)}"
                )
                if existing is None:
                    await conn.execute(
                        f"CREATE ROLE {role} WITH NOSUPERUSER NOREPLICATION NOBYPASSRLS"
                        f" {attributes}"
                    )
                else:
                    if any(existing[k] for k in ("rolsuper", "rolreplication", "rolbypassrls")):
                        # Not one secd made: never hand out a password to a privileged role.
                        raise BackendError(
                            f"role {account} exists with superuser, replication or bypassrls;"
                            " refusing to reuse it"
                        )
                    await conn.execute(f"ALTER ROLE {role} WITH {attributes}")
                    await self._reset_privileges(conn, account, existing["oid"])

                if statement_timeout_s is None:
                    await conn.execute(f"ALTER ROLE {role} RESET statement_timeout")
                else:
                    milliseconds = int(statement_timeout_s) * 1000
                    await conn.execute(f"ALTER ROLE {role} SET statement_timeout = {milliseconds}")
                idle_ms = int(self.settings.idle_in_transaction_timeout_s) * 1000
                await conn.execute(
                    f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = {idle_ms}"
                )
                await conn.execute(f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {role}")
                planted: list[str] = []
                if hide_rows or canaries:
                    schema = account
                    planted = await self._run_views(conn, account, granted, hide_rows, canaries)
                else:
                    schema = SCHEMA
                    if existing is not None:
                        # An earlier try of this issue may have had per-run views.
                        await self._drop_run_schemas(conn, account)
                        await conn.execute(f"ALTER ROLE {role} RESET search_path")
                    await conn.execute(f"GRANT USAGE ON SCHEMA {quote_ident(SCHEMA)} TO {role}")
                    for table in granted:
                        target = f"{quote_ident(SCHEMA)}.{quote_ident(table)}"
                        await conn.execute(f"GRANT SELECT ON TABLE {target} TO {role}")
                await self._check_exact(conn, account, granted, schema)
        except _DB_ERRORS as exc:
            raise BackendError(
                f"issuing {account} failed: {type(exc).__name__}: "
                + redact(str(exc), password, verifier)
            ) from None
        log.info(
            "issued postgres account",
            extra={
                "account": account,
                "granted": granted,
                "refused": len(refused),
                "canary_tables": len(planted),
            },
        )
        return IssueResult(granted=granted, refused=refused, planted=planted)

    async def _run_views(
        self,
        conn: asyncpg.Connection,
        account: str,
        granted: list[str],
        hide_rows: int,
        canaries: tuple[CanaryRow, ...],
    ) -> list[str]:
        """The account's schema of per-run views (made afresh), one per granted table, granted to
        it and first on its search_path: each leaves out `hide_rows` random rows (replay) and
        adds the `canaries` where the table can hold them. The tables that got canaries."""
        role, views = quote_ident(account), quote_ident(account)
        hidden = quote_ident(hidden_schema(account))
        planted_in = quote_ident(canaries_schema(account))
        await self._drop_run_schemas(conn, account)
        await conn.execute(f"CREATE SCHEMA {views}")
        if hide_rows:
            await conn.execute(f"CREATE SCHEMA {hidden}")
        if canaries:
            await conn.execute(f"CREATE SCHEMA {planted_in}")
        planted: list[str] = []
        for table in granted:
            name = quote_ident(table)
            source = f"{quote_ident(SCHEMA)}.{name}"
            # Quoted identifiers and ints only, in every statement below.
            view = f"SELECT * FROM {source}"  # noqa: S608
            options = ""
            if hide_rows:
                key_column = await conn.fetchval(_PRIMARY_KEY, SCHEMA, table)
                # Without a one-column primary key a row is named by its place (ctid), which an
                # UPDATE during the run moves: documented for operators.
                key = quote_ident(key_column) if key_column is not None else "ctid"
                choose = f"SELECT {key} AS key FROM {source}"  # noqa: S608
                choose += f" ORDER BY random() LIMIT {int(hide_rows)}"
                await conn.execute(f"CREATE TABLE {hidden}.{name} AS {choose}")
                view += f" WHERE {key} NOT IN (SELECT key FROM {hidden}.{name})"  # noqa: S608
                # The account's own conditions must not see the left-out rows first.
                options = " WITH (security_barrier)"
            if canaries and await self._plant(conn, table, canaries, planted_in):
                view += f" UNION ALL SELECT * FROM {planted_in}.{name}"  # noqa: S608
                planted.append(table)
            await conn.execute(f"CREATE VIEW {views}.{name}{options} AS {view}")
            await conn.execute(f"GRANT SELECT ON TABLE {views}.{name} TO {role}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {views} TO {role}")
        # Unqualified names resolve to the views, so the job's queries run unchanged.
        await conn.execute(f"ALTER ROLE {role} SET search_path = {views}")
        return planted

    async def _plant(
        self,
        conn: asyncpg.Connection,
        table: str,
        canaries: tuple[CanaryRow, ...],
        schema: str,
    ) -> bool:
        """Copy `table`'s columns into `schema` (quoted) and insert the canaries mapped to them;
        False (nothing made) when no column can hold a value that gives a canary away."""
        found = await conn.fetch(_COLUMNS, SCHEMA, table)
        columns = [_column(r["name"], r["category"], r["type"], r["typmod"]) for r in found]
        rows = canary_values(canaries, table, columns)
        if not rows:
            return False
        name = quote_ident(table)
        source = f"{quote_ident(SCHEMA)}.{name}"
        await conn.execute(f"CREATE TABLE {schema}.{name} AS SELECT * FROM {source} WITH NO DATA")  # noqa: S608
        # The values travel as JSON in a bind parameter; the server converts each to its
        # column's type, and a column the JSON does not name is NULL.
        await conn.executemany(
            f"INSERT INTO {schema}.{name}"  # noqa: S608
            f" SELECT * FROM json_populate_record(NULL::{schema}.{name}, $1::json)",
            [(json.dumps(row),) for row in rows],
        )
        return True

    async def _check_exact(
        self, conn: asyncpg.Connection, account: str, granted: list[str], schema: str = SCHEMA
    ) -> None:
        # The server's own privilege functions, PUBLIC's grants included, must show nothing
        # beyond SELECT on `granted` (of `schema`); raising rolls the whole issue back.
        extra = await conn.fetch(_EXTRA_PRIVILEGES, account, schema, granted)
        if not extra:
            return
        what = ", ".join(
            f"{row['kind']} {row['name']}"
            if row["schema"] is None
            else f"{row['schema']}.{row['name']}"
            for row in extra[:10]
        )
        raise BackendError(
            f"database {self.settings.database} would let {account} do more than read its"
            f" granted tables ({what}) through grants to PUBLIC; revoke those grants"
        )

    async def _reset_privileges(self, conn: asyncpg.Connection, account: str, oid: int) -> None:
        # A retry must end with exactly this issue's grants, whatever an earlier try left.
        role = quote_ident(account)
        await conn.execute(f"DROP OWNED BY {role}")
        memberships = await conn.fetch(
            "SELECT r.rolname::text AS name FROM pg_catalog.pg_auth_members m"
            " JOIN pg_catalog.pg_roles r ON r.oid = m.roleid WHERE m.member = $1",
            oid,
        )
        for row in memberships:
            await conn.execute(f"REVOKE {quote_ident(row['name'])} FROM {role}")

    async def accounts(self) -> list[str]:
        """Every account secd issued on this server that still exists (for the sweeper)."""
        pool = await self._get_pool()
        try:
            # An account's view schema without its role (an interrupted revoke) is listed too,
            # by the account's name, so that the sweeper's revoke drops it (and the schemas of
            # hidden keys and canaries made with it, in the same transaction).
            rows = await pool.fetch(
                "SELECT rolname::text AS name FROM pg_catalog.pg_roles"
                " WHERE rolname LIKE 'secd\\_r%'"
                " UNION SELECT nspname::text FROM pg_catalog.pg_namespace"
                " WHERE nspname LIKE 'secd\\_r%' AND nspname NOT LIKE '%\\_hidden'"
                " AND nspname NOT LIKE '%\\_canaries'"
            )
        except _DB_ERRORS as exc:
            raise BackendError(f"listing accounts failed: {type(exc).__name__}") from None
        return sorted(r["name"] for r in rows if ACCOUNT_PATTERN.fullmatch(r["name"]))

    async def revoke(self, account: str) -> None:
        """Forbid login, end every session of `account`, drop what it owns, then drop it."""
        check_account(account)
        role = quote_ident(account)
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                # The run's end and the sweeper (of this replica or another) may revoke the same
                # account at once; PostgreSQL then fails one ALTER/DROP ROLE with "tuple
                # concurrently updated". A session lock on the name makes them take turns.
                await conn.execute("SELECT pg_catalog.pg_advisory_lock($1, hashtext($2))",
                                   _ACCOUNT_LOCK, account)  # fmt: skip
                try:
                    await self._revoke_locked(conn, account, role)
                finally:
                    await conn.execute("SELECT pg_catalog.pg_advisory_unlock($1, hashtext($2))",
                                       _ACCOUNT_LOCK, account)  # fmt: skip
        except _DB_ERRORS as exc:
            raise BackendError(f"revoking {account} failed: {type(exc).__name__}: {exc}") from None
        log.info("revoked postgres account", extra={"account": account})

    async def _revoke_locked(self, conn: asyncpg.Connection, account: str, role: str) -> None:
        oid = await conn.fetchval("SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1", account)
        if oid is None:
            await self._drop_run_schemas(conn, account)
            return
        # Committed on its own first, so no new session can start while old ones end.
        await conn.execute(f"ALTER ROLE {role} NOLOGIN")
        await self._terminate(conn, account, oid)
        async with conn.transaction():
            await conn.execute(_GRANTS_TURN, _GRANTS_LOCK)
            if await conn.fetchval("SELECT 1 FROM pg_catalog.pg_roles WHERE oid = $1", oid):
                await conn.execute(f"DROP OWNED BY {role}")
                await self._drop_run_schemas(conn, account)
                await conn.execute(f"DROP ROLE IF EXISTS {role}")
        # A session that slipped in between is keyed by oid, which outlives the name.
        await self._terminate(conn, account, oid)

    async def _drop_run_schemas(self, conn: asyncpg.Connection, account: str) -> None:
        # The views, the hidden keys and the canaries are the administrator's, not the
        # account's: DROP OWNED leaves them, so an account's per-run schemas go by name.
        for schema in (account, hidden_schema(account), canaries_schema(account)):
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")

    async def _terminate(self, conn: asyncpg.Connection, account: str, oid: int) -> None:
        # Signal every session at once, then poll: pg_terminate_backend's own timeout waits in
        # 100 ms steps per backend, which adds up with several sessions.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _TERMINATE_WAIT_S
        while True:
            pids = await conn.fetch(
                "SELECT pid FROM pg_catalog.pg_stat_activity"
                " WHERE usesysid = $1 AND pid <> pg_backend_pid()",
                oid,
            )
            if not pids:
                return
            if loop.time() > deadline:
                raise BackendError(f"sessions of {account} did not end in {_TERMINATE_WAIT_S}s")
            await conn.fetch(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid",
                [row["pid"] for row in pids],
            )
            await asyncio.sleep(0.005)
