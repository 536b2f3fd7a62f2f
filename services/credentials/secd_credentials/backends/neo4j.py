"""Neo4j: one user per run and a role that may traverse and read the granted node labels only.

Per-label roles exist in Neo4j Enterprise alone. Neo4j Community has no roles and every user has
implied administrator privileges, so there the backend refuses to issue unless the operator set
`accept_full_read = true`, and then says in the result what the account really got.

User names, role names, database names and the password travel as Cypher parameters. Labels
cannot be parameters in privilege commands: they are checked against an ASCII identifier pattern
first, then backtick-quoted, and only labels the database already has are ever granted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
import neo4j
import neo4j.exceptions

from secd_shared.dbkind import DbKind, facts
from secd_shared.events import DatabaseAddress, Refusal

from ..accounts import ACCOUNT_PATTERN, ACCOUNT_PREFIX
from ..groups import table_problem
from .base import BackendError, IssueResult, check_account, check_issue_args, redact, split_tables

__all__ = [
    "COMMUNITY_REFUSAL",
    "DEFAULT_PORT",
    "FULL_READ_NOTE",
    "URI_SCHEMES",
    "Neo4jBackend",
    "Neo4jSettings",
    "label_problem",
    "quote_label",
    "role_name",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = facts("neo4j").default_port
URI_SCHEMES = facts("neo4j").uri_schemes
# Neo4j's own rule for database names (lower case is how it stores them; it compares ignoring case).
DATABASE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9.\-]{2,62}")
SYSTEM_DATABASE = "system"
COMMUNITY_REFUSAL = (
    "Neo4j Community has no per-label roles and makes every user an administrator;"
    " set accept_full_read = true to issue such accounts anyway, or use Enterprise"
)
FULL_READ_NOTE = (
    "granted: full read (Community edition) - and, as every Community user, write and"
    " administration too; accept_full_read = true is set for this database"
)
_KILL_WAIT_S = 5.0
_DB_ERRORS = (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError)

# Every statement the backend sends; tests compare against these, so the text lives in one place.
COMPONENTS = "CALL dbms.components() YIELD name, edition RETURN name, edition"
LABELS = "CALL db.labels() YIELD label WHERE label IN $labels RETURN label"
SHOW_USER = "SHOW USERS YIELD user, roles WHERE user = $user RETURN user, roles"
CREATE_USER = (
    "CREATE USER $user IF NOT EXISTS SET PASSWORD $password CHANGE NOT REQUIRED"
    " SET STATUS SUSPENDED"
)
CREATE_USER_COMMUNITY = "CREATE USER $user IF NOT EXISTS SET PASSWORD $password CHANGE NOT REQUIRED"
DROP_ROLE = "DROP ROLE $role IF EXISTS"
CREATE_ROLE = "CREATE ROLE $role"
GRANT_TRAVERSE = "GRANT TRAVERSE ON GRAPH $database NODES {label} TO $role"
GRANT_READ = "GRANT READ {{*}} ON GRAPH $database NODES {label} TO $role"
GRANT_ACCESS = "GRANT ACCESS ON DATABASE $database TO $role"
GRANT_ROLE = "GRANT ROLE $role TO $user"
ACTIVATE_USER = "ALTER USER $user SET PASSWORD $password CHANGE NOT REQUIRED SET STATUS ACTIVE"
RESET_PASSWORD = "ALTER USER $user SET PASSWORD $password CHANGE NOT REQUIRED"  # noqa: S105
SUSPEND_USER = "ALTER USER $user IF EXISTS SET STATUS SUSPENDED"
DROP_USER = "DROP USER $user IF EXISTS"
SHOW_TRANSACTIONS = (
    "SHOW TRANSACTIONS YIELD transactionId, username, status WHERE username = $user"
    " RETURN transactionId, status"
)
TERMINATE_TRANSACTIONS = "TERMINATE TRANSACTIONS $ids"
LIST_CONNECTIONS = (
    "CALL dbms.listConnections() YIELD connectionId, username WHERE username = $user"
    " RETURN connectionId"
)
LIST_USERS = "SHOW USERS YIELD user WHERE user STARTS WITH $prefix RETURN user"
LIST_ROLES = "SHOW ROLES YIELD role WHERE role STARTS WITH $prefix RETURN role"
KILL_CONNECTIONS = (
    "CALL dbms.killConnections($ids) YIELD connectionId, message RETURN connectionId, message"
)


class Neo4jSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How secd reaches Neo4j as an administrator, and the database whose labels it grants."""

    uri: str
    user: str = facts("neo4j").default_admin
    password: str
    database: str = "neo4j"
    accept_full_read: bool = False

    def __post_init__(self) -> None:
        """Reject settings that cannot work, naming the setting."""
        parts = urlsplit(self.uri)
        if parts.scheme not in URI_SCHEMES or not parts.hostname:
            raise ValueError(
                f"uri must look like bolt://host:7687 (schemes: {', '.join(URI_SCHEMES)})"
            )
        if parts.username or parts.password:
            # A password in a URL ends up in logs and events; it belongs in `password`.
            raise ValueError("uri must not hold a user or password; use user and password")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError:
            raise ValueError("uri has a port that is not a number in 0..65535") from None
        if not self.user:
            raise ValueError("user must be set")
        if not self.password:
            raise ValueError("password must be set")
        if DATABASE_PATTERN.fullmatch(self.database) is None:
            raise ValueError(f"database {self.database!r} is not a Neo4j database name")
        if self.database.lower() == SYSTEM_DATABASE:
            raise ValueError("database must be a graph database, not the system database")

    def __repr__(self) -> str:
        """Everything but the password."""
        return (
            f"Neo4jSettings(uri={self.uri!r}, user={self.user!r}, database={self.database!r},"
            f" accept_full_read={self.accept_full_read!r}, password=***)"
        )


def role_name(account: str) -> str:
    """The role that carries `account`'s label grants: ``secd_<account>``."""
    return "secd_" + check_account(account)


def label_problem(label: object) -> str | None:
    """Why `label` is not an acceptable node label, or None when it is."""
    problem = table_problem(label)
    # Same rules as table names (ASCII identifier, at most 64 characters); said in Neo4j's words.
    return None if problem is None else problem.replace("table name", "label")


def quote_label(label: str) -> str:
    """A Cypher quoted name: backticks around, inner backticks doubled."""
    if not isinstance(label, str) or not label or "\x00" in label:
        raise ValueError("label must be non-empty text without NUL")
    if "\\" in label:
        # Cypher has read \u escapes in quoted names in some versions, which could smuggle a
        # backtick past the doubling below; no valid label holds a backslash, so none may pass.
        raise ValueError("label must not hold a backslash")
    return "`" + label.replace("`", "``") + "`"


class _Result(Protocol):
    async def data(self) -> list[dict[str, Any]]: ...


class Neo4jSession(Protocol):
    """The part of `neo4j.AsyncSession` the backend uses: run one auto-commit query."""

    async def run(self, query: str, parameters: dict[str, Any] | None = None) -> _Result:
        """Send `query` with its parameters kept apart from the text."""
        ...


SessionFactory = Callable[[str], AbstractAsyncContextManager[Neo4jSession]]


class Neo4jBackend:
    """Issues and revokes temporary Neo4j users that may read some node labels of one database."""

    kind: DbKind = "neo4j"

    def __init__(
        self, settings: Neo4jSettings, *, session_factory: SessionFactory | None = None
    ) -> None:
        """Remember the settings; the driver opens on first use (a given factory replaces it)."""
        self.settings = settings
        self._session_factory = session_factory
        self._driver: neo4j.AsyncDriver | None = None
        self._edition: str | None = None
        self._lock = asyncio.Lock()

    def address(self) -> DatabaseAddress:
        """Host and Bolt port from the uri; Neo4j has no Unix socket."""
        parts = urlsplit(self.settings.uri)
        return DatabaseAddress(
            kind=self.kind,
            database=self.settings.database,
            host=parts.hostname,
            port=parts.port or DEFAULT_PORT,
        )

    async def _factory(self) -> SessionFactory:
        if self._session_factory is not None:
            return self._session_factory
        async with self._lock:
            if self._driver is None:
                s = self.settings
                self._driver = neo4j.AsyncGraphDatabase.driver(
                    s.uri,
                    auth=neo4j.basic_auth(s.user, s.password),
                    user_agent="secd-credentials",
                    connection_timeout=10.0,
                )
            driver = self._driver
        return lambda database: driver.session(database=database)

    async def close(self) -> None:
        """Close the admin driver, if it was opened."""
        async with self._lock:
            driver, self._driver = self._driver, None
        if driver is not None:
            await driver.close()

    async def _run(
        self, database: str, query: str, parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        factory = await self._factory()
        async with factory(database) as session:
            result = await session.run(query, parameters or {})
            return await result.data()

    async def edition(self) -> str:
        """The server's edition, "enterprise" or "community", asked once and remembered."""
        if self._edition is None:
            rows = await self._run(self.settings.database, COMPONENTS)
            kernel = [r for r in rows if r.get("name") == "Neo4j Kernel"] or rows
            edition = str(kernel[0].get("edition") or "").lower() if kernel else ""
            if edition not in ("enterprise", "community"):
                raise BackendError(f"Neo4j reported an unknown edition {edition!r}")
            self._edition = edition
        return self._edition

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
        """Create or reset `account` with TRAVERSE and READ on the existing labels in `tables`.

        Neo4j has no per-user expiry, connection limit or statement limit: all three are checked
        here, `expires_at` is enforced by revocation and the sweeper, the limits not at all.
        """
        check_issue_args(
            account,
            password,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
        )
        wanted, refused = split_tables(tables, label_problem)
        try:
            edition = await self.edition()
            if edition == "community" and not self.settings.accept_full_read:
                # Nothing is created: a Community user could do everything an admin can.
                refused += [Refusal(name=label, reason=COMMUNITY_REFUSAL) for label in wanted]
                return IssueResult(granted=[], refused=refused)
            granted = await self._existing_labels(wanted, refused)
            if not granted:
                return IssueResult(granted=[], refused=refused)
            if edition == "enterprise":
                await self._issue_enterprise(account, password, granted)
            else:
                await self._issue_community(account, password)
                refused.append(Refusal(name="*", reason=FULL_READ_NOTE))
        except _DB_ERRORS as exc:
            raise BackendError(
                f"issuing {account} failed: {type(exc).__name__}: {redact(str(exc), password)}"
            ) from None
        log.info(
            "issued neo4j account",
            extra={"account": account, "granted": granted, "edition": edition},
        )
        return IssueResult(granted=granted, refused=refused)

    async def _existing_labels(self, wanted: list[str], refused: list[Refusal]) -> list[str]:
        if not wanted:
            return []
        database = self.settings.database
        rows = await self._run(database, LABELS, {"labels": wanted})
        found = {row["label"] for row in rows}
        granted: list[str] = []
        for label in wanted:
            if label in found:
                granted.append(label)
            else:
                reason = f"label {label} does not exist in database {database}"
                refused.append(Refusal(name=label, reason=reason))
        return granted

    async def _check_reusable(self, account: str) -> None:
        rows = await self._run(SYSTEM_DATABASE, SHOW_USER, {"user": account})
        allowed = {"PUBLIC", role_name(account)}
        for row in rows:
            extra = set(row.get("roles") or ()) - allowed
            if extra:
                # Not one secd made: never hand out a password to a user with other roles.
                raise BackendError(
                    f"user {account} exists with roles {', '.join(sorted(extra))};"
                    " refusing to reuse it"
                )

    async def _issue_enterprise(self, account: str, password: str, labels: list[str]) -> None:
        user = {"user": account}
        role = {"role": role_name(account)}
        on = {**role, "database": self.settings.database}
        await self._check_reusable(account)
        # Created suspended: a fresh or half-reset user cannot log in until the last statement
        # below has set its role, password and status together.
        await self._run(SYSTEM_DATABASE, CREATE_USER, {**user, "password": password})
        # On a retry the user may be active with the old password: lock it for the reset too.
        await self._run(SYSTEM_DATABASE, SUSPEND_USER, user)
        # Dropping the role first leaves exactly this issue's grants after any earlier try.
        await self._run(SYSTEM_DATABASE, DROP_ROLE, role)
        await self._run(SYSTEM_DATABASE, CREATE_ROLE, role)
        for label in labels:
            quoted = quote_label(label)
            await self._run(SYSTEM_DATABASE, GRANT_TRAVERSE.format(label=quoted), on)
            await self._run(SYSTEM_DATABASE, GRANT_READ.format(label=quoted), on)
        await self._run(SYSTEM_DATABASE, GRANT_ACCESS, on)
        await self._run(SYSTEM_DATABASE, GRANT_ROLE, {**role, **user})
        await self._run(SYSTEM_DATABASE, ACTIVATE_USER, {**user, "password": password})

    async def _issue_community(self, account: str, password: str) -> None:
        params = {"user": account, "password": password}
        await self._run(SYSTEM_DATABASE, CREATE_USER_COMMUNITY, params)
        # On a retry the user exists already; this makes the new password the one that works.
        await self._run(SYSTEM_DATABASE, RESET_PASSWORD, params)

    async def accounts(self) -> list[str]:
        """Every account secd issued on this server that still exists (for the sweeper).

        On Enterprise a role whose user is gone counts too, so that revoking it drops the role.
        """
        prefix = ACCOUNT_PREFIX + "r"
        try:
            rows = await self._run(SYSTEM_DATABASE, LIST_USERS, {"prefix": prefix})
            names = {str(r["user"]) for r in rows}
            if await self.edition() == "enterprise":
                role_prefix = role_name(prefix)
                rows = await self._run(SYSTEM_DATABASE, LIST_ROLES, {"prefix": role_prefix})
                names |= {str(r["role"]).removeprefix("secd_") for r in rows}
        except _DB_ERRORS as exc:
            raise BackendError(f"listing accounts failed: {type(exc).__name__}") from None
        return sorted(n for n in names if n.startswith(prefix) and ACCOUNT_PATTERN.fullmatch(n))

    async def revoke(self, account: str) -> None:
        """Suspend `account`, end its transactions and connections, drop it and its role.

        Dropping a Neo4j user ends none of its connections, so they are killed by user name,
        before and after the drop. Every step is safe to repeat.
        """
        check_account(account)
        user = {"user": account}
        try:
            edition = await self.edition()
            if edition == "enterprise":
                # A suspended user loses every role at once, open connections included.
                await self._run(SYSTEM_DATABASE, SUSPEND_USER, user)
                await self._end_sessions(account)
                await self._run(SYSTEM_DATABASE, DROP_USER, user)
                await self._run(SYSTEM_DATABASE, DROP_ROLE, {"role": role_name(account)})
            else:
                # Community cannot suspend: drop first so no new login succeeds, then cut.
                await self._run(SYSTEM_DATABASE, DROP_USER, user)
            # A connection that authenticated just before the suspension or drop ends here.
            await self._end_sessions(account)
        except _DB_ERRORS as exc:
            raise BackendError(f"revoking {account} failed: {type(exc).__name__}: {exc}") from None
        log.info("revoked neo4j account", extra={"account": account})

    async def _end_sessions(self, account: str) -> None:
        database = self.settings.database
        user = {"user": account}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _KILL_WAIT_S
        terminated: set[str] = set()
        while True:
            rows = await self._run(database, SHOW_TRANSACTIONS, user)
            open_ids = [
                r["transactionId"]
                for r in rows
                if not str(r.get("status") or "").startswith("Terminated")
            ]
            fresh = [tx for tx in open_ids if tx not in terminated]
            if fresh:
                await self._run(database, TERMINATE_TRANSACTIONS, {"ids": fresh})
                terminated.update(fresh)
            listed = await self._run(database, LIST_CONNECTIONS, user)
            connections = [r["connectionId"] for r in listed]
            if connections:
                await self._run(database, KILL_CONNECTIONS, {"ids": connections})
            if not open_ids and not connections:
                return
            if loop.time() > deadline:
                raise BackendError(
                    f"transactions or connections of {account} did not end in {_KILL_WAIT_S}s"
                )
            await asyncio.sleep(0.02)
