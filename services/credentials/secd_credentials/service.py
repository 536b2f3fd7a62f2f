"""build.succeeded -> credentials.issued | run.failed; a run's end -> credentials.revoked.

The credentials service is the only one that reaches the sensitive databases. An account gets
SELECT on exactly the existing tables its researcher's groups name; its password is sealed to the
executor's key before it leaves this process, and it is revoked when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from secd_credentials.accounts import (
    account_name,
    new_password,
    replay_account_name,
    run_id_of,
)
from secd_credentials.backends import (
    Backend,
    CanaryBackend,
    IssueResult,
    ReplayBackend,
    backend_for,
)
from secd_credentials.groups import grants_for
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.canaries import CanaryRow, canary_rows, read_canary_key
from secd_shared.config import Config, ConfigError
from secd_shared.durations import hours_to_s
from secd_shared.events import (
    TERMINAL_TYPES,
    AnyPayload,
    BuildSucceeded,
    CredentialsIssued,
    CredentialsRevoked,
    CredentialsRevokeFailed,
    Event,
    Refusal,
    new_event,
)
from secd_shared.identity import IdentityError, NoIdentity, make_identity
from secd_shared.runid import parse_run_id, run_created_at
from secd_shared.sealing import seal
from secd_shared.service import Handlers, producer_for
from secd_shared.worker import PermanentError, TransientError, skips_if

__all__ = ["Credentials", "setup"]

log = logging.getLogger("secd.credentials")


class Credentials:
    """Issues and revokes temporary accounts on the configured databases."""

    def __init__(
        self, config: Config, bus: EventBus, *, backends: Mapping[str, Backend] | None = None
    ) -> None:
        """Backends for the configured databases, or the given ones (by database name)."""
        self.bus = bus
        self.settings = config.credentials
        # The groups file, or Keycloak through GitLab (identity.kind).
        self.identity = make_identity(config)
        self.producer = producer_for("credentials")
        # An account with no credentials.issued this old cannot belong to a run in progress.
        self.orphan_after_s = hours_to_s(config.builder.max_runfor_h) + config.builder.timeout_s
        # Neighbour replay ([airlock]): which runs get a second account, and how many rows of
        # each table it does not see.
        self.replay_mode = config.airlock.neighbour_replay
        self.replay_rows = config.airlock.neighbour_replay_rows
        if not 1 <= self.replay_rows <= 10_000:
            raise ConfigError(
                f"airlock.neighbour_replay_rows must be 1..10000, not {self.replay_rows!r}"
            )
        self.backends: dict[str, Backend] = (
            dict(backends)
            if backends is not None
            else {name: backend_for(db) for name, db in config.credentials.databases.items()}
        )
        # Canary rows ([canaries]): the key they are made under, None when the site has none.
        self.canary_key = read_canary_key(config)
        self.canary_count = config.canaries.rows
        if self.canary_key is not None:
            without = sorted(
                n for n, b in self.backends.items() if not isinstance(b, CanaryBackend)
            )
            if without:
                log.warning(
                    "canaries.rows is %d, but databases %s cannot have canary rows (PostgreSQL"
                    " only): their runs read the tables without them",
                    self.canary_count,
                    ", ".join(without),
                )

    # A redelivery after the event was written: the account and its sealed password are already
    # in the log, and resetting the password now would orphan them.
    @skips_if("credentials.issued")
    async def on_built(self, stored: StoredEvent) -> list[CredentialsIssued]:
        """Issue the run's account, just before it runs."""
        event = stored.event
        built = event.payload
        assert isinstance(built, BuildSucceeded)
        name = built.plan.spec.database or self.settings.default_database
        backend = self.backends.get(name)
        if backend is None:
            known = ", ".join(sorted(self.backends)) or "none"
            raise PermanentError(
                f"secd.yml: database {name!r} is not configured at this site (available: {known})"
            )
        try:
            groups = await asyncio.to_thread(self.identity.groups_of, event.actor)
        except NoIdentity as exc:
            raise PermanentError(str(exc)) from None
        except IdentityError as exc:
            raise TransientError(str(exc)) from None
        tables, refused = grants_for(groups, backend.kind)
        if not tables:
            raise PermanentError(
                f"{event.actor} has no group granting a table of database {name!r} "
                f"(groups look like {backend.kind}-<table>-read); ask your project administrator"
                + _refusals(refused)
            )
        runfor_s = hours_to_s(built.plan.spec.runfor)
        expires_at = datetime.now(UTC) + timedelta(seconds=runfor_s + self.settings.grace_s)
        account = account_name(event.run_id)
        password = new_password()
        canaries = self._canaries(event.run_id, backend)
        result = await _issue(
            backend,
            account,
            password,
            tables,
            canaries=canaries,
            hide_rows=0,
            expires_at=expires_at,
            max_connections=self.settings.max_connections,
            # A backstop only: the executor stops the job at runfor and revocation ends its
            # sessions; no single statement may outlive the lease.
            statement_timeout_s=max(1, math.ceil(runfor_s + self.settings.grace_s)),
        )
        refused = [*refused, *result.refused]
        if not result.granted:
            await backend.revoke(account)
            raise PermanentError(
                f"nothing in {event.actor}'s groups could be granted on database {name!r}"
                + _refusals(refused)
            )
        log.info(
            "issued %s with %d tables (%d with canary rows)",
            account,
            len(result.granted),
            len(result.planted),
            extra={"run_id": event.run_id},
        )
        replay_account = replay_sealed = None
        if self.replay_mode == "always" or (
            self.replay_mode == "opt-in" and built.plan.spec.replay
        ):
            replay_account = replay_account_name(event.run_id)
            replay_password = new_password()
            await self._issue_replay(
                backend,
                name,
                account,
                replay_account,
                replay_password,
                result.granted,
                canaries=canaries,
                # The replay runs after the run, for as long again: its lease (and the one the
                # event records, which the sweeper goes by) covers both.
                expires_at=expires_at + timedelta(seconds=runfor_s),
                statement_timeout_s=max(1, math.ceil(runfor_s + self.settings.grace_s)),
            )
            expires_at += timedelta(seconds=runfor_s)
            replay_sealed = seal(self.settings.executor_public_key, replay_password)
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
                replay_account=replay_account,
                replay_sealed_password=replay_sealed,
            )
        ]

    async def _issue_replay(
        self,
        backend: Backend,
        database: str,
        account: str,
        replay_account: str,
        password: str,
        granted: list[str],
        *,
        canaries: tuple[CanaryRow, ...],
        expires_at: datetime,
        statement_timeout_s: int,
    ) -> None:
        """The run's neighbour-replay account, on the same tables; the run fails (both accounts
        revoked) where the database cannot have one."""
        if not isinstance(backend, ReplayBackend):
            await backend.revoke(account)
            raise PermanentError(
                f"neighbour replay is not available on {backend.kind} database {database!r} yet"
                " (PostgreSQL and MariaDB only); remove `replay: true` from secd.yml, or ask the"
                " operator about [airlock] neighbour_replay"
            )
        try:
            # The same canaries as the run's account: the replay must see the same rows but k.
            replay = await _issue(
                backend,
                replay_account,
                password,
                granted,
                canaries=canaries,
                hide_rows=self.replay_rows,
                expires_at=expires_at,
                max_connections=self.settings.max_connections,
                statement_timeout_s=statement_timeout_s,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await backend.revoke(replay_account)
            raise
        if replay.granted != granted:
            await backend.revoke(replay_account)
            raise TransientError(
                f"the replay account of database {database!r} got other tables than the run's"
            )

    @skips_if("credentials.revoked")
    async def on_ended(self, stored: StoredEvent) -> list[CredentialsRevoked]:
        """Revoke the run's account when the run has ended (any way it ended)."""
        run = await self.bus.read_run(stored.event.run_id)
        issued = _first(run, "credentials.issued")
        if issued is None:
            return []  # the run ended before it got an account: nothing to revoke
        payload = issued.event.payload
        assert isinstance(payload, CredentialsIssued)
        backend = self.backends.get(payload.database)
        if backend is None:
            raise TransientError(f"database {payload.database!r} is no longer configured")
        if payload.replay_account:
            await self._revoke(backend, payload.replay_account, cause=stored)
        await self._revoke(backend, payload.account, cause=stored)
        return [CredentialsRevoked(account=payload.account, backend=backend.kind)]

    async def _revoke(self, backend: Backend, account: str, *, cause: StoredEvent) -> None:
        """Revoke, or record `credentials.revoke_failed` and raise TransientError (retried)."""
        try:
            await backend.revoke(account)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:300]
            log.error(
                "revoking %s failed: %s", account, reason, extra={"run_id": cause.event.run_id}
            )
            failed = CredentialsRevokeFailed(account=account, backend=backend.kind, reason=reason)
            with contextlib.suppress(Exception):
                await self.bus.publish(self._event(failed, cause))
            raise TransientError(f"revoking {account} failed; the sweeper retries it") from None
        log.info("revoked %s", account, extra={"run_id": cause.event.run_id})

    def _event(self, payload: AnyPayload, cause: StoredEvent) -> Event:
        return new_event(
            payload,
            run_id=cause.event.run_id,
            producer=self.producer,
            actor=cause.event.actor,
            project=cause.event.project,
            cause=cause.event,
            cause_data=cause.data,
        )

    async def sweep(self) -> list[str]:
        """Revoke every account on the databases whose run ended or whose lease expired.

        The databases say which accounts exist, the log says which should: this finds accounts
        that a crash, a lost event or a failed revocation left behind, and keeps retrying them.
        """
        revoked = []
        now = datetime.now(UTC)
        for name, backend in self.backends.items():
            try:
                accounts = await backend.accounts()
            except Exception as exc:
                log.warning("sweep of %s skipped: %s", name, exc)
                continue
            for account in accounts:
                run_id = run_id_of(account)
                run = await self.bus.read_run(run_id)
                issued = _first(run, "credentials.issued")
                lease = issued.event.payload if issued is not None else None
                if isinstance(lease, CredentialsIssued) and lease.database != name:
                    continue
                ended = next((s for s in run if s.event.type in TERMINAL_TYPES), None)
                expired = isinstance(lease, CredentialsIssued) and lease.expires_at <= now
                # Issued but not yet in the log is normal for a few milliseconds; only an
                # account older than any possible run is an orphan.
                orphan = issued is None and _run_age_s(run_id, now) > self.orphan_after_s
                if not (ended or expired or orphan):
                    continue
                cause = ended or issued or (run[-1] if run else None)
                try:
                    if cause is None:
                        await backend.revoke(account)
                    else:
                        await self._revoke(backend, account, cause=cause)
                except Exception as exc:
                    log.warning("sweeper could not revoke %s yet: %s", account, exc)
                    continue
                revoked.append(account)
                primary = isinstance(lease, CredentialsIssued) and lease.account == account
                if primary and _first(run, "credentials.revoked") is None:
                    assert cause is not None  # `issued` is one of its choices
                    done = CredentialsRevoked(account=account, backend=backend.kind)
                    await self.bus.publish(self._event(done, cause))
                log.warning(
                    "sweeper revoked %s (%s)",
                    account,
                    "run ended" if ended else "lease expired" if expired else "orphan",
                    extra={"run_id": run_id},
                )
        return revoked

    async def sweep_forever(self) -> None:
        """Sweep at start-up and then every `sweep_interval_s`."""
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed; trying again next time")
            await asyncio.sleep(self.settings.sweep_interval_s)

    async def close(self) -> None:
        """Close every backend's admin connections."""
        for backend in self.backends.values():
            await backend.close()

    def _canaries(self, run_id: str, backend: Backend) -> tuple[CanaryRow, ...]:
        """The run's canary rows, where the site plants them and the database can hold them."""
        if self.canary_key is None or not isinstance(backend, CanaryBackend):
            return ()
        return canary_rows(self.canary_key, run_id, self.canary_count)


async def _issue(
    backend: Backend,
    account: str,
    password: str,
    tables: list[str],
    *,
    canaries: tuple[CanaryRow, ...],
    hide_rows: int,
    expires_at: datetime,
    max_connections: int,
    statement_timeout_s: int,
) -> IssueResult:
    """An account through the one backend call that gives it what it needs: canary rows
    and/or rows left out (replay), or plain SELECT."""
    if canaries and isinstance(backend, CanaryBackend):
        return await backend.issue_with_canaries(
            account,
            password,
            tables,
            canaries=canaries,
            hide_rows=hide_rows,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
        )
    if hide_rows:
        assert isinstance(backend, ReplayBackend)  # checked by the caller, naming the database
        return await backend.issue_replay(
            account,
            password,
            tables,
            hide_rows=hide_rows,
            expires_at=expires_at,
            max_connections=max_connections,
            statement_timeout_s=statement_timeout_s,
        )
    return await backend.issue(
        account,
        password,
        tables,
        expires_at=expires_at,
        max_connections=max_connections,
        statement_timeout_s=statement_timeout_s,
    )


def _first(run: list[StoredEvent], event_type: str) -> StoredEvent | None:
    return next((s for s in run if s.event.type == event_type), None)


def _run_age_s(run_id: str, now: datetime) -> float:
    """Seconds since the run was created, from the time its id carries (inf for a bad id)."""
    try:
        return (now - run_created_at(parse_run_id(run_id))).total_seconds()
    except ValueError:
        return float("inf")


def _refusals(refused: Sequence[Refusal]) -> str:
    if not refused:
        return ""
    return " (" + "; ".join(f"{r.name}: {r.reason}" for r in refused[:5]) + ")"


async def setup(config: Config, bus: EventBus) -> tuple[Handlers, Callable[[], Awaitable[None]]]:
    """Two consumers (issue before the run, revoke after it) and the sweeper beside them."""
    if not config.credentials.executor_public_key:
        raise SystemExit("secd-credentials: credentials.executor_public_key is required")
    try:
        credentials = Credentials(config, bus)
    except ConfigError as exc:
        raise SystemExit(f"secd-credentials: {exc}") from None
    sweeper = asyncio.create_task(credentials.sweep_forever())

    async def cleanup() -> None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await credentials.close()

    return (
        {"credentials": credentials.on_built, "credentials-revoke": credentials.on_ended},
        cleanup,
    )
