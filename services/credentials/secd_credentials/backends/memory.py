"""A database held in this process: the Backend contract without a server, for tests.

`MemoryBackend` keeps the promises every adapter keeps (tests/contracts/ runs the same suite
against it and against real PostgreSQL, MariaDB and Neo4j): the same name checks and refusals,
SELECT on existing tables only, a retry resets the password and the grants, revocation ends the
account's sessions and is safe to repeat, and `accounts()` lists what secd issued. Like
PostgreSQL's VALID UNTIL it refuses logins after `expires_at`, and it enforces the connection
limit. It holds no data but what it is given, and nothing outside this process can reach it, so
it is not a database kind a site can configure: jobs would have nothing to connect to.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from secd_shared.dbkind import DbKind, db_kind
from secd_shared.events import DatabaseAddress, Refusal

from ..accounts import ACCOUNT_PATTERN, ACCOUNT_PREFIX
from .base import IssueResult, check_account, check_issue_args, check_replay_args, split_tables

__all__ = ["MemoryBackend", "MemorySession"]


@dataclass
class _Account:
    password_digest: bytes
    tables: tuple[str, ...]
    expires_at: datetime
    max_connections: int
    statement_timeout_s: int | None
    sessions: set[MemorySession] = field(default_factory=set)
    # Neighbour replay: per table, the positions of the rows this account does not see.
    hidden: dict[str, frozenset[int]] = field(default_factory=dict)


def _digest(password: str) -> bytes:
    # Only a digest is kept, so a dump of the backend (a debugger, a test failure) shows none.
    return hashlib.sha256(password.encode()).digest()


class MemorySession:
    """One login as an issued account: reads what the account may read until it is revoked."""

    def __init__(self, backend: MemoryBackend, account: str) -> None:
        """A session of `account`; made by `MemoryBackend.connect`."""
        self._backend = backend
        self.account = account
        self.ended = False

    def read(self, table: str) -> list[Any]:
        """The rows of `table`; PermissionError if not granted, ConnectionError once ended."""
        if self.ended:
            raise ConnectionError(f"the session of {self.account} was ended")
        account = self._backend._accounts.get(self.account)
        if account is None or table not in account.tables:
            raise PermissionError(f"permission denied for table {table}")
        hidden = account.hidden.get(table, frozenset())
        return [row for i, row in enumerate(self._backend.tables[table]) if i not in hidden]

    def close(self) -> None:
        """End the session; safe to call twice."""
        self.ended = True
        account = self._backend._accounts.get(self.account)
        if account is not None:
            account.sessions.discard(self)


class MemoryBackend:
    """Issues and revokes accounts on tables kept in memory, standing in for a `kind` database."""

    def __init__(
        self,
        *,
        kind: DbKind = "postgres",
        database: str = "sensitive",
        tables: Mapping[str, Sequence[Any]] | Iterable[str] = (),
    ) -> None:
        """A database `database` holding `tables` (names, or names mapped to their rows).

        `kind` is the kind it answers as, so grant groups `<kind>-<table>-read` apply to it.
        """
        self.kind: DbKind = db_kind(kind)
        self.database = database
        if isinstance(tables, Mapping):
            self.tables: dict[str, list[Any]] = {name: list(rows) for name, rows in tables.items()}
        else:
            self.tables = {name: [] for name in tables}
        self._accounts: dict[str, _Account] = {}

    def address(self) -> DatabaseAddress:
        """The database's name and kind; it has no host, port or socket to reach it by."""
        return DatabaseAddress(kind=self.kind, database=self.database)

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
        """Create or reset `account` with SELECT on those of `tables` that exist here."""
        check_issue_args(
            account,
            password,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
        )
        wanted, refused = split_tables(tables)
        granted: list[str] = []
        for table in wanted:
            if table in self.tables:
                granted.append(table)
            else:
                reason = f"table {table} does not exist in database {self.database}"
                refused.append(Refusal(name=table, reason=reason))
        previous = self._accounts.get(account)
        self._accounts[account] = _Account(
            password_digest=_digest(password),
            tables=tuple(granted),
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
            # A retry changes what open sessions may read, as a server's grants do.
            sessions=previous.sessions if previous is not None else set(),
        )
        return IssueResult(granted=granted, refused=refused)

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
        """As `issue`; each table then reads without `hide_rows` rows chosen at random."""
        check_replay_args(account, hide_rows)
        result = await self.issue(
            account,
            password,
            tables,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
        )
        chooser = random.SystemRandom()
        self._accounts[account].hidden = {
            table: frozenset(
                chooser.sample(
                    range(len(self.tables[table])), min(hide_rows, len(self.tables[table]))
                )
            )
            for table in result.granted
        }
        return result

    async def revoke(self, account: str) -> None:
        """End every session of `account` and drop it; a no-op when it does not exist."""
        check_account(account)
        removed = self._accounts.pop(account, None)
        if removed is None:
            return
        for session in list(removed.sessions):
            session.ended = True
        removed.sessions.clear()

    async def accounts(self) -> list[str]:
        """The accounts secd issued here that still exist."""
        prefix = ACCOUNT_PREFIX + "r"
        return sorted(
            name
            for name in self._accounts
            if name.startswith(prefix) and ACCOUNT_PATTERN.fullmatch(name)
        )

    async def close(self) -> None:
        """Nothing to close: the accounts stay, as they would on a server."""

    def connect(self, account: str, password: str, *, now: datetime | None = None) -> MemorySession:
        """Log in as `account`, as a job would; PermissionError when the server would refuse."""
        found = self._accounts.get(account)
        if found is None or not hmac.compare_digest(found.password_digest, _digest(password)):
            raise PermissionError(f"password authentication failed for user {account}")
        if (now or datetime.now(UTC)) >= found.expires_at:
            raise PermissionError(f"the account {account} has expired")
        if len(found.sessions) >= found.max_connections:
            raise PermissionError(f"too many connections for {account}")
        session = MemorySession(self, account)
        found.sessions.add(session)
        return session

    def granted(self, account: str) -> list[str] | None:
        """The tables `account` may read, or None when it does not exist (for tests)."""
        found = self._accounts.get(account)
        return None if found is None else list(found.tables)
