"""Database backends of the credentials service: PostgreSQL and MariaDB."""

from __future__ import annotations

from .base import Backend, BackendError, IssueResult
from .mariadb import MariaDBBackend, MariaDBSettings
from .postgres import PostgresBackend, PostgresSettings

__all__ = [
    "Backend",
    "BackendError",
    "IssueResult",
    "MariaDBBackend",
    "MariaDBSettings",
    "PostgresBackend",
    "PostgresSettings",
    "make_backend",
]


def make_backend(settings: PostgresSettings | MariaDBSettings) -> Backend:
    """The backend for a settings object."""
    if isinstance(settings, PostgresSettings):
        return PostgresBackend(settings)
    if isinstance(settings, MariaDBSettings):
        return MariaDBBackend(settings)
    raise TypeError(f"no backend for {type(settings).__name__}")
