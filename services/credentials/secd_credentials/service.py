"""build.succeeded -> credentials.issued | run.failed; a run's end -> credentials.revoked.

The credentials service is the only one that reaches the sensitive databases. An account gets
SELECT on exactly the existing tables its researcher's groups name; its password is sealed to the
executor's key before it leaves this process, and it is revoked when the run ends.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from secd_credentials.accounts import account_name, new_password
from secd_credentials.backends import (
    MariaDBSettings,
    PostgresSettings,
    make_backend,
)
from secd_credentials.backends.base import Backend
from secd_credentials.groups import grants_for
from secd_credentials.identity import FileIdentity, IdentityError
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config, DatabaseConfig
from secd_shared.events import (
    BuildSucceeded,
    CredentialsIssued,
    CredentialsRevoked,
)
from secd_shared.sealing import seal
from secd_shared.worker import PermanentError, TransientError

__all__ = ["Credentials", "setup"]

log = logging.getLogger("secd.credentials")


class Credentials:
    """Issues and revokes temporary accounts on the configured databases."""

    def __init__(self, config: Config, bus: EventBus) -> None:
        self.bus = bus
        self.settings = config.credentials
        self.identity = FileIdentity(config.path(config.identity.groups_file))
        self.backends: dict[str, Backend] = {
            name: make_backend(backend_settings(db))
            for name, db in config.credentials.databases.items()
        }

    async def on_built(self, stored: StoredEvent) -> list[CredentialsIssued]:
        """Issue the run's account, just before it runs."""
        event = stored.event
        built = event.payload
        assert isinstance(built, BuildSucceeded)
        if any(s.event.type == "credentials.issued" for s in await self.bus.read_run(event.run_id)):
            # A redelivery after the event was written: the account and its sealed password
            # are already in the log, and resetting the password now would orphan them.
            return []
        name = built.plan.spec.database or self.settings.default_database
        backend = self.backends.get(name)
        if backend is None:
            known = ", ".join(sorted(self.backends)) or "none"
            raise PermanentError(
                f"secd.yml: database {name!r} is not configured at this site (available: {known})"
            )
        try:
            groups = self.identity.groups_of(event.actor)
        except IdentityError as exc:
            raise TransientError(str(exc)) from None
        tables, refused = grants_for(groups, backend.kind)
        if not tables:
            raise PermanentError(
                f"{event.actor} has no group granting a table of database {name!r} "
                f"(groups look like {backend.kind}-<table>-read); ask your project administrator"
                + _refusals(refused)
            )
        runfor_s = built.plan.spec.runfor * 3600
        expires_at = datetime.now(UTC) + timedelta(seconds=runfor_s + self.settings.grace_s)
        account = account_name(event.run_id)
        password = new_password()
        result = await backend.issue(
            account,
            password,
            tables,
            expires_at=expires_at,
            max_connections=self.settings.max_connections,
            statement_timeout_s=int(runfor_s),
        )
        refused = [*refused, *result.refused]
        if not result.granted:
            await backend.revoke(account)
            raise PermanentError(
                f"none of the tables in {event.actor}'s groups exist in database {name!r}"
                + _refusals(refused)
            )
        log.info(
            "issued %s with %d tables", account, len(result.granted), extra={"run_id": event.run_id}
        )
        return [
            CredentialsIssued(
                plan=built.plan,
                database=name,
                account=account,
                address=backend.address(),
                sealed_password=seal(self.settings.executor_public_key, password),
                granted=result.granted,
                refused=refused,
                expires_at=expires_at,
            )
        ]

    async def on_ended(self, stored: StoredEvent) -> list[CredentialsRevoked]:
        """Revoke the run's account when the run has ended (any way it ended)."""
        run = await self.bus.read_run(stored.event.run_id)
        types = [s.event.type for s in run]
        if "credentials.issued" not in types or "credentials.revoked" in types:
            return []
        issued = next(s.event.payload for s in run if s.event.type == "credentials.issued")
        assert isinstance(issued, CredentialsIssued)
        backend = self.backends.get(issued.database)
        if backend is None:
            raise TransientError(f"database {issued.database!r} is no longer configured")
        await backend.revoke(issued.account)
        log.info("revoked %s", issued.account, extra={"run_id": stored.event.run_id})
        return [CredentialsRevoked(account=issued.account, backend=backend.kind)]

    async def close(self) -> None:
        """Close every backend's admin connections."""
        for backend in self.backends.values():
            await backend.close()


def backend_settings(db: DatabaseConfig) -> PostgresSettings | MariaDBSettings:
    """The backend settings for one configured database."""
    if db.kind == "postgres":
        return PostgresSettings(
            database=db.database,
            host=db.host or "127.0.0.1",
            port=db.port or 5432,
            user=db.user or "postgres",
            password=db.password,
            socket_dir=db.socket_dir,
        )
    return MariaDBSettings(
        database=db.database,
        host=db.host or "127.0.0.1",
        port=db.port or 3306,
        user=db.user or "root",
        password=db.password,
        socket=db.socket,
    )


def _refusals(refused) -> str:
    if not refused:
        return ""
    return " (" + "; ".join(f"{r.name}: {r.reason}" for r in refused[:5]) + ")"


async def setup(config: Config, bus: EventBus):
    """Two consumers: issue before the run, revoke after it."""
    if not config.credentials.executor_public_key:
        raise SystemExit("secd-credentials: credentials.executor_public_key is required")
    credentials = Credentials(config, bus)
    return (
        {"credentials": credentials.on_built, "credentials-revoke": credentials.on_ended},
        credentials.close,
    )
