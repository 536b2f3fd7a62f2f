"""The granted tables, as the airlock reads them: with its own read-only account, never the run's.

The airlock fingerprints the tables a run was granted (secd_airlock.checks.SourceIndex: keyed
hashes, no raw values kept) and checks every output against them. Reading a table is the cost,
so an index is kept per (database, tables, each table's version): a table's version is a cheap
server-side digest of it (PostgreSQL: the row versions' xmin and ctid; MariaDB: CHECKSUM TABLE),
so a changed table is read again and an unchanged one is not.

Table names come from `credentials.issued` (the credentials service checked them against the
database); they are checked again here and quoted as identifiers, never pasted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from secd_airlock.checks import Rules, SourceIndex, Table
from secd_shared.config import DatabaseConfig

log = logging.getLogger("secd.airlock")

__all__ = ["SourceError", "Sources", "quote_identifier"]

# The most rows of one table the airlock reads to fingerprint it.
MAX_SOURCE_ROWS = 500_000
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class SourceError(Exception):
    """A granted table could not be read; the message says which and why (no values)."""


def quote_identifier(name: str, quote: str) -> str:
    """`name` quoted for SQL after checking it is a plain identifier (ValueError otherwise)."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain table name: {name[:80]!r}")
    return f"{quote}{name}{quote}"


def _secret(value: object) -> str | None:
    if value is None:
        return None
    reveal = getattr(value, "reveal", None)
    return reveal() if callable(reveal) else str(value)


@dataclass
class _Cached:
    versions: tuple[str, ...]
    index: SourceIndex


class Sources:
    """Fingerprints of granted tables, per database, cached by table version."""

    def __init__(
        self, databases: dict[str, DatabaseConfig], key: bytes, rules: Rules, *, keep: int = 32
    ) -> None:
        self.databases = databases
        self.key = key
        self.rules = rules
        self.keep = keep
        self._cache: OrderedDict[tuple[str, tuple[str, ...]], _Cached] = OrderedDict()
        self._locks: dict[tuple[str, tuple[str, ...]], asyncio.Lock] = {}
        self.reads = 0  # tables read (for tests and the bench: how often the cache missed)

    def covers(self, database: str) -> bool:
        """Whether the airlock has an account on `database` of a kind it can read."""
        db = self.databases.get(database)
        return db is not None and db.kind in ("postgres", "mariadb")

    async def index(self, database: str, tables: Iterable[str]) -> SourceIndex:
        """The index of `tables` of `database`, from the cache when no table changed."""
        names = tuple(sorted(set(tables)))
        for name in names:
            quote_identifier(name, '"')
        db = self.databases.get(database)
        if db is None or not self.covers(database):
            raise SourceError(f"the airlock has no read account on database {database!r}")
        key = (database, names)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            reader = _Postgres(db) if db.kind == "postgres" else _MariaDB(db)
            async with reader:
                versions = tuple([await reader.version(name) for name in names])
                cached = self._cache.get(key)
                if cached is not None and cached.versions == versions:
                    self._cache.move_to_end(key)
                    return cached.index
                read = [Table(name, *await reader.rows(name)) for name in names]
            self.reads += len(read)
            index = await asyncio.to_thread(SourceIndex.build, self.key, read, self.rules)
            self._cache[key] = _Cached(versions, index)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
            return index

    async def tables(self, database: str, tables: Iterable[str], max_rows: int) -> list[Table]:
        """The granted tables' rows themselves (at most `max_rows` each), for the model attacks
        (secd_airlock.checks.models), which need the data a model was trained on. Never kept:
        the caller drops them after the attack."""
        names = tuple(sorted(set(tables)))
        for name in names:
            quote_identifier(name, '"')
        db = self.databases.get(database)
        if db is None or not self.covers(database):
            raise SourceError(f"the airlock has no read account on database {database!r}")
        reader = _Postgres(db) if db.kind == "postgres" else _MariaDB(db)
        async with reader:
            read = []
            for name in names:
                columns, rows = await reader.rows(name)
                read.append(Table(name, columns, rows[:max_rows]))
        return read


class _Postgres:
    def __init__(self, db: DatabaseConfig) -> None:
        self.db = db
        self.conn: Any = None  # an asyncpg Connection once entered (asyncpg has no type hints)

    async def __aenter__(self) -> _Postgres:
        import asyncpg

        try:
            self.conn = await asyncpg.connect(
                host=self.db.socket_dir or self.db.host,
                port=self.db.port or 5432,
                user=self.db.user,
                password=_secret(self.db.password),
                database=self.db.database,
                timeout=10,
            )
            # Read only, and a statement may not run away with the database.
            await self.conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            await self.conn.execute("SET statement_timeout = '120s'")
        except (OSError, asyncpg.PostgresError) as exc:
            raise SourceError(f"connecting to {self.db.database!r}: {type(exc).__name__}") from None
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def version(self, name: str) -> str:
        table = f'"public".{quote_identifier(name, chr(34))}'
        try:
            row = await self.conn.fetchrow(
                f"SELECT count(*)::text AS n,"  # noqa: S608 - a checked, quoted identifier
                f" md5(coalesce(string_agg(xmin::text || ctid::text, ',' ORDER BY ctid), ''))"
                f" AS h FROM {table}"
            )
        except Exception as exc:
            raise SourceError(f"reading table {name!r}: {type(exc).__name__}") from None
        return f"{row['n']}:{row['h']}"

    async def rows(self, name: str) -> tuple[list[str], list[tuple[object, ...]]]:
        table = f'"public".{quote_identifier(name, chr(34))}'
        try:
            stmt = await self.conn.prepare(f"SELECT * FROM {table} LIMIT {MAX_SOURCE_ROWS}")  # noqa: S608
            columns = [a.name for a in stmt.get_attributes()]
            records = await stmt.fetch()
        except Exception as exc:
            raise SourceError(f"reading table {name!r}: {type(exc).__name__}") from None
        return columns, [tuple(r) for r in records]


class _MariaDB:
    def __init__(self, db: DatabaseConfig) -> None:
        self.db = db
        self.conn: Any = None  # an aiomysql Connection once entered (aiomysql has no type hints)

    async def __aenter__(self) -> _MariaDB:
        import aiomysql

        kwargs = {"unix_socket": self.db.socket} if self.db.socket else {"host": self.db.host}
        try:
            self.conn = await aiomysql.connect(
                **kwargs,
                port=self.db.port or 3306,
                user=self.db.user,
                password=_secret(self.db.password) or "",
                db=self.db.database,
                connect_timeout=10,
            )
            async with self.conn.cursor() as cur:
                await cur.execute("SET SESSION TRANSACTION READ ONLY")
                await cur.execute("SET SESSION max_statement_time = 120")
        except Exception as exc:
            raise SourceError(f"connecting to {self.db.database!r}: {type(exc).__name__}") from None
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.conn is not None:
            self.conn.close()

    async def version(self, name: str) -> str:
        table = quote_identifier(name, "`")
        try:
            async with self.conn.cursor() as cur:
                await cur.execute(f"CHECKSUM TABLE {table}")
                row = await cur.fetchone()
                await cur.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608
                count = await cur.fetchone()
        except Exception as exc:
            raise SourceError(f"reading table {name!r}: {type(exc).__name__}") from None
        return f"{count[0]}:{row[1]}"

    async def rows(self, name: str) -> tuple[list[str], list[tuple[object, ...]]]:
        table = quote_identifier(name, "`")
        try:
            async with self.conn.cursor() as cur:
                await cur.execute(f"SELECT * FROM {table} LIMIT {MAX_SOURCE_ROWS}")  # noqa: S608
                columns = [d[0] for d in cur.description]
                return columns, list(await cur.fetchall())
        except Exception as exc:
            raise SourceError(f"reading table {name!r}: {type(exc).__name__}") from None
