"""What every database backend offers, and the checks they share before touching a server."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from secd_shared.canaries import CanaryRow
from secd_shared.dbkind import DbKind
from secd_shared.events import DatabaseAddress, Refusal

from ..accounts import ACCOUNT_PATTERN, is_replay_account
from ..groups import table_problem

__all__ = [
    "Backend",
    "BackendError",
    "CanaryBackend",
    "IssueResult",
    "ReplayBackend",
    "check_account",
    "check_issue_args",
    "redact",
    "split_tables",
]


@dataclass(frozen=True)
class IssueResult:
    """The outcome of issuing an account: tables granted, and tables refused with reasons."""

    granted: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    # The granted tables that read with the run's canary rows added (CanaryBackend only).
    planted: list[str] = field(default_factory=list)


class BackendError(RuntimeError):
    """A database server refused an administrative step; the message never holds a secret."""


@runtime_checkable
class Backend(Protocol):
    """A database that secd issues temporary read-only accounts on: the credentials port.

    Adapters: PostgresBackend, MariaDBBackend, Neo4jBackend and MemoryBackend; one contract
    suite (tests/contracts/test_backend_contract.py) holds each of them to the same behaviour.
    """

    kind: DbKind

    def address(self) -> DatabaseAddress:
        """Where jobs connect to reach this database."""
        ...

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
        """Create (or reset) `account` with SELECT on those of `tables` that exist here."""
        ...

    async def revoke(self, account: str) -> None:
        """Lock `account`, end its sessions and drop it; a no-op when it does not exist."""
        ...

    async def accounts(self) -> list[str]:
        """The accounts secd issued that still exist on the server."""
        ...

    async def close(self) -> None:
        """Close the admin connections."""
        ...


@runtime_checkable
class ReplayBackend(Backend, Protocol):
    """A backend that can also issue a run's neighbour-replay account (PostgreSQL, MariaDB and
    memory; Neo4j cannot)."""

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
        """As `issue`, but each table reads without `hide_rows` rows chosen at random."""
        ...


@runtime_checkable
class CanaryBackend(Backend, Protocol):
    """A backend that can plant a run's canary rows in the tables it grants (PostgreSQL)."""

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
        """As `issue` (or `issue_replay` with `hide_rows` > 0), each table that has a column a
        canary can fill reading with the `canaries` added; `planted` names those tables."""
        ...


def check_account(account: str) -> str:
    """`account` when it is a safe account name; ValueError otherwise."""
    if not isinstance(account, str) or ACCOUNT_PATTERN.fullmatch(account) is None:
        raise ValueError(f"not an acceptable account name: {account!r}")
    return account


def check_issue_args(
    account: str,
    password: str,
    *,
    expires_at: datetime,
    max_connections: int,
    statement_timeout_s: int | None,
) -> None:
    """Reject arguments that would otherwise reach SQL text; ValueError naming the first."""
    check_account(account)
    if not isinstance(password, str) or not password:
        raise ValueError("password must be non-empty text")
    if not isinstance(expires_at, datetime) or expires_at.utcoffset() is None:
        raise ValueError("expires_at must be a timezone-aware datetime")
    # bool is an int subclass; True connections would be a bug upstream, not a count.
    if type(max_connections) is not int or not 1 <= max_connections <= 10_000:
        raise ValueError(f"max_connections must be an int in 1..10000, not {max_connections!r}")
    if statement_timeout_s is not None and (
        type(statement_timeout_s) is not int or not 1 <= statement_timeout_s <= 31 * 86400
    ):
        raise ValueError(
            f"statement_timeout_s must be None or a positive int, not {statement_timeout_s!r}"
        )


def check_replay_args(account: str, hide_rows: int, *, least: int = 1) -> None:
    """Reject a replay issue's own arguments: a replay account's name (secd_<run_id>_n) when rows
    are hidden, and `hide_rows` an int in least..10000; ValueError naming the first."""
    if hide_rows and not is_replay_account(account):
        raise ValueError(f"{account!r} is not a replay account name (secd_<run_id>_n)")
    if type(hide_rows) is not int or not least <= hide_rows <= 10_000:
        raise ValueError(f"hide_rows must be an int in {least}..10000, not {hide_rows!r}")


def split_tables(
    tables: list[str], problem_of: Callable[[object], str | None] = table_problem
) -> tuple[list[str], list[Refusal]]:
    """Well-formed names (in order, once each) and refusals for the malformed ones."""
    if isinstance(tables, str):
        raise TypeError("names must be a list, not one string")
    good: list[str] = []
    refused: list[Refusal] = []
    for table in tables:
        problem = problem_of(table)
        if problem is not None:
            refused.append(Refusal(name=str(table), reason=problem))
        elif table not in good:
            good.append(table)
    return good, refused


def redact(text: str, *secrets: str) -> str:
    """`text` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    # A server may echo part of a statement, cut short; hide anything shaped like a hash too.
    text = re.sub(r"SCRAM-SHA-256\$[^\s'\"]*", "SCRAM-SHA-256$***", text)
    return re.sub(r"\*[0-9A-Fa-f]{8,40}", "*HASH***", text)
