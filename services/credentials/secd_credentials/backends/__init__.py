"""Database backends of the credentials service: the `Backend` port and its adapters.

Adapters: PostgreSQL, MariaDB/MySQL and Neo4j, made from a site's configuration by
`backend_for`, the one place that knows them; and `MemoryBackend`, made directly by tests (a
site cannot configure it: jobs would have no database to connect to).
"""

from __future__ import annotations

from secd_shared.config import DatabaseConfig
from secd_shared.dbkind import db_kind, facts
from secd_shared.secret import reveal

from .base import Backend, BackendError, CanaryBackend, IssueResult, ReplayBackend
from .mariadb import MariaDBBackend, MariaDBSettings
from .memory import MemoryBackend, MemorySession
from .neo4j import Neo4jBackend, Neo4jSettings
from .postgres import PostgresBackend, PostgresSettings

__all__ = [
    "Backend",
    "BackendError",
    "BackendSettings",
    "CanaryBackend",
    "IssueResult",
    "MariaDBBackend",
    "MariaDBSettings",
    "MemoryBackend",
    "MemorySession",
    "Neo4jBackend",
    "Neo4jSettings",
    "PostgresBackend",
    "PostgresSettings",
    "ReplayBackend",
    "backend_for",
    "backend_settings",
    "make_backend",
]

BackendSettings = PostgresSettings | MariaDBSettings | Neo4jSettings


def make_backend(settings: BackendSettings) -> Backend:
    """The backend for a settings object."""
    if isinstance(settings, PostgresSettings):
        return PostgresBackend(settings)
    if isinstance(settings, MariaDBSettings):
        return MariaDBBackend(settings)
    if isinstance(settings, Neo4jSettings):
        return Neo4jBackend(settings)
    raise TypeError(f"no backend for {type(settings).__name__}")


def backend_settings(db: DatabaseConfig) -> BackendSettings:
    """The backend settings for one configured database (its kind's defaults filled in)."""
    kind = db_kind(db.kind)
    defaults = facts(kind)
    if kind == "neo4j":
        return Neo4jSettings(
            uri=db.uri or "",
            user=db.user or defaults.default_admin,
            password=reveal(db.password) or "",
            database=db.database,
            accept_full_read=db.accept_full_read,
        )
    if kind == "postgres":
        return PostgresSettings(
            database=db.database,
            host=db.host or "127.0.0.1",
            port=db.port or defaults.default_port,
            user=db.user or defaults.default_admin,
            password=reveal(db.password),
            socket_dir=db.socket_dir,
        )
    return MariaDBSettings(
        database=db.database,
        host=db.host or "127.0.0.1",
        port=db.port or defaults.default_port,
        user=db.user or defaults.default_admin,
        password=reveal(db.password),
        socket=db.socket,
    )


def backend_for(db: DatabaseConfig) -> Backend:
    """The backend of one configured database."""
    return make_backend(backend_settings(db))
