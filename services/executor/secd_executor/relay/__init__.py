"""The executor's side of a run's database access: a Unix socket that admits only the run's account.

The socket file is bind-mounted into the sandbox (see sandbox.py), where forwarder.py exposes it
as 127.0.0.1:PORT. Each accepted connection is checked before anything reaches the database, by
the wire protocol of the database's kind, one module each:

- postgres.py (PostgreSQL): the StartupMessage must name the run's account and database before
  the server is connected to.
- mysql.py (MySQL/MariaDB): the server's greeting loses TLS and compression, the client's
  HandshakeResponse41 and every later COM_CHANGE_USER must name the run's account.
- bolt.py (Neo4j): plain Bolt 3 to 5 only; every HELLO or LOGON must log in as the run's
  account, and no message may impersonate another user.

base.py holds what they share: the listening socket, the time limit on logging in, the copying
and close(), which tears every connection down, so a finished or cancelled run keeps no path to
the data.

This matters because the relay connects as root from outside the sandbox: a server's
password-less accounts (trust auth, or MariaDB's unix_socket plugin, which trusts the relay's
own uid) would otherwise be one connection away from every job.

Every read before admission is bounded in size and time. Nothing the client sends (passwords,
auth data) is logged; only a refused account name is, shortened.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from secd_shared.dbkind import DB_KINDS, DbKind

from .base import HANDSHAKE_TIMEOUT_S, REFUSAL, Relay, WireProtocol
from .bolt import BoltProtocol
from .mysql import MySQLProtocol
from .postgres import PostgresProtocol

__all__ = ["KINDS", "REFUSAL", "WIRE_PROTOCOLS", "DatabaseRelay"]

KINDS = DB_KINDS
# The wire protocol each kind of database speaks: made with path=, account=, database=.
WIRE_PROTOCOLS: dict[DbKind, Callable[..., WireProtocol]] = {
    "postgres": PostgresProtocol,
    "mysql": MySQLProtocol,
    "neo4j": BoltProtocol,
}


class DatabaseRelay(Relay):
    """A Unix socket at `path` relaying the run's own `account` to the database (TCP or socket).

    `kind` is "postgres", "mysql" or "neo4j"; `database`, when given, is the only PostgreSQL
    database a client may name (MySQL grants and Neo4j roles confine an account themselves).
    """

    def __init__(
        self,
        path: Path,
        *,
        account: str,
        kind: DbKind,
        database: str | None = None,
        host: str | None = None,
        port: int | None = None,
        socket: str | None = None,
        uid: int = 65534,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        """Check the target, the kind and the account; nothing listens until start()."""
        make_protocol = WIRE_PROTOCOLS.get(kind)
        if make_protocol is None:
            # Bytes the relay cannot read could log in as anyone: refuse rather than pass them.
            raise ValueError(
                f"the database relay checks logins for {' and '.join(KINDS)} only; a {kind!r}"
                " database cannot be reached from the sandbox"
            )
        if not isinstance(account, str) or not account or "\x00" in account:
            raise ValueError("account must be a non-empty name")
        self.account = account
        self.kind = kind
        self.database = database
        super().__init__(
            path,
            protocol=make_protocol(path=Path(path), account=account, database=database),
            host=host,
            port=port,
            socket=socket,
            uid=uid,
            handshake_timeout_s=handshake_timeout_s,
        )
