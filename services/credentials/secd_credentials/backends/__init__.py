"""Database backends of the credentials service: PostgreSQL, MariaDB and Neo4j."""

from __future__ import annotations

from .base import Backend, BackendError, IssueResult
from .mariadb import MariaDBBackend, MariaDBSettings
from .neo4j import Neo4jBackend, Neo4jSettings
from .postgres import PostgresBackend, PostgresSettings

__all__ = [
    "Backend",
    "BackendError",
    "IssueResult",
    "MariaDBBackend",
    "MariaDBSettings",
    "Neo4jBackend",
    "Neo4jSettings",
    "PostgresBackend",
    "PostgresSettings",
    "make_backend",
]


def make_backend(settings: PostgresSettings | MariaDBSettings | Neo4jSettings) -> Backend:
    """The backend for a settings object."""
    if isinstance(settings, PostgresSettings):
        return PostgresBackend(settings)
    if isinstance(settings, MariaDBSettings):
        return MariaDBBackend(settings)
    if isinstance(settings, Neo4jSettings):
        return Neo4jBackend(settings)
    raise TypeError(f"no backend for {type(settings).__name__}")
