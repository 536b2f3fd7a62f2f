"""The executor's port to where jobs run (`ExecutorAPI`), and the handler that drives it.

A runtime takes a `RunRequest` through four steps, in order: prepare (create what the run needs,
nothing started), execute (start it and wait for it to end), collect (copy its outputs to the
run's output folder) and cleanup (remove everything it created). Each step is safe to call twice
for the same run, as the worker loop redelivers an event after a crash: a second prepare finds
its own objects, a second execute adopts the job already running (or already ended), a second
collect copies again, a second cleanup finds nothing left to remove.

`RuntimeExecutor.on_issued` is the credentials.issued handler written against that port, and
the only one: the bubblewrap runtime (bwrap.py), the Kubernetes runtime (kubernetes.py) and the
stub (stub.py) plug into it, and one contract suite (tests/contracts) runs against all three.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from secd_shared.artifacts import ArtifactStore, put_tree
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config
from secd_shared.dbkind import DbKind, default_port, facts
from secd_shared.durations import hours_to_s
from secd_shared.events import CredentialsIssued, RunFinished, RunStarted, new_event
from secd_shared.limits import Limits, LimitsConfig, resolve_limits
from secd_shared.sealing import load_private_key, unseal
from secd_shared.service import producer_for
from secd_shared.worker import PermanentError, skips_if

__all__ = ["REPLAY_SUFFIX", "ExecutorAPI", "RunOutcome", "RunRequest", "RuntimeExecutor", "seed_of"]

log = logging.getLogger("secd.executor")

DEFAULT_LIMITS = LimitsConfig().defaults()
# The replay's own name where a runtime needs one (folders, uids, Kubernetes objects).
REPLAY_SUFFIX = "-replay"


def seed_of(run_id: str) -> str:
    """The run's SECD_SEED: 32 bits from its id, in decimal (numpy, random and R accept it)."""
    return str(int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16))


@dataclass(frozen=True)
class RunRequest:
    """One run, in the executor's terms: what to run, as whom, reaching which database."""

    run_id: str
    researcher: str
    project: str
    command: list[str]
    database: str
    db_kind: DbKind
    db_port: int
    db_name: str
    db_user: str
    # Secret values reach the job only through the runtime's secret store, never its spec.
    db_password: str = field(repr=False)
    runfor_h: float  # as in secd.yml; runfor_s is what runtimes use
    gpu: int
    cache_dir: str | None
    mount_path: str
    output_dir: Path
    log_path: Path
    # Where the database is: a host (and db_port) a job's network reaches, or the server's
    # Unix socket (a runtime on the database's machine relays to it).
    db_host: str | None = None
    db_socket: str | None = None
    # What to run it with: the built image (Kubernetes), or the environment and source
    # folders the builder prepared (this machine).
    image: str | None = None
    environment: str = ""
    source: str = ""
    # What the run may use (the site's defaults, the project's secd.yml, the site's maximum).
    limits: Limits = DEFAULT_LIMITS
    # SECD_SEED in the job's environment: the same in a run and its neighbour replay.
    seed: str = ""
    # A run's neighbour replay: its run_id is "<run_id>-replay", its log is never shipped to
    # the job-log stream (the researcher never sees it), and it gets no cache.
    replay: bool = False

    @property
    def runfor_s(self) -> float:
        """How long the job may run, in seconds."""
        return hours_to_s(self.runfor_h)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: `reason` is None when the command ran to its end (any exit code)."""

    exit_code: int | None
    duration_s: float
    reason: str | None = None
    timed_out: bool = False
    # False when the command never ran (image not pulled, refused): there is nothing to collect.
    started: bool = True


class ExecutorAPI(Protocol):
    """Where jobs run. Every method is safe to call twice for the same run."""

    async def prepare(self, request: RunRequest) -> None:
        """Create everything the run needs without starting it; existing objects are reused."""
        ...

    async def execute(
        self, request: RunRequest, on_start: Callable[[], Awaitable[None]]
    ) -> RunOutcome:
        """Start the run (or adopt it if it already runs or ran), stream its log, await its end."""
        ...

    async def collect(self, request: RunRequest) -> list[str]:
        """Copy the run's outputs into request.output_dir; returns what was left out and why."""
        ...

    async def cleanup(self, request: RunRequest) -> None:
        """Remove everything the run created; what is already gone is skipped."""
        ...

    async def close(self) -> None:
        """Release what the runtime holds for all runs (clients, background tasks)."""
        ...


class RuntimeExecutor:
    """credentials.issued -> run.started, run.finished | run.failed, on any ExecutorAPI."""

    def __init__(
        self, config: Config, bus: EventBus, runtime: ExecutorAPI, store: ArtifactStore
    ) -> None:
        self.bus = bus
        self.runtime = runtime
        self.store = store
        self.runs_dir = config.path(config.executor.runs_dir)
        self.key = load_private_key(config.path(config.executor.private_key_file))
        self.producer = producer_for("executor")
        self.limits = config.limits

    def request_for(self, stored: StoredEvent) -> RunRequest:
        """The run's request from its credentials.issued event (the password unsealed)."""
        event = stored.event
        issued = event.payload
        assert isinstance(issued, CredentialsIssued)
        plan, spec, address = issued.plan, issued.plan.spec, issued.address
        run_dir = self.runs_dir / event.run_id
        return RunRequest(
            run_id=event.run_id,
            researcher=event.actor,
            project=event.project,
            command=list(spec.command),
            database=issued.database,
            db_kind=address.kind,
            db_host=address.host,
            db_socket=address.socket,
            db_port=address.port or default_port(address.kind),
            db_name=address.database,
            db_user=issued.account,
            db_password=unseal(self.key, issued.sealed_password),
            runfor_h=spec.runfor,
            gpu=spec.gpu,
            cache_dir=spec.cache_dir,
            mount_path=spec.cache_mount,
            output_dir=run_dir / "output",
            log_path=run_dir / "job.log",
            image=plan.image,
            environment=plan.environment,
            source=plan.source,
            limits=resolve_limits(self.limits, spec.limits),
            seed=seed_of(event.run_id),
        )

    def replay_request(self, stored: StoredEvent, request: RunRequest) -> RunRequest | None:
        """The run's neighbour replay: the same job and seed as the replay account, in folders
        of its own and without the cache (a channel from the run to its replay); None if the
        run has no replay account."""
        issued = stored.event.payload
        assert isinstance(issued, CredentialsIssued)
        if not issued.replay_account or not issued.replay_sealed_password:
            return None
        run_dir = self.runs_dir / (request.run_id + REPLAY_SUFFIX)
        # Where the replay account's views are is a fact of the database's kind (MariaDB: a
        # database named after the account), so the event needs no field of its own.
        own_database = facts(issued.address.kind).replay_own_database
        return dataclasses.replace(
            request,
            run_id=request.run_id + REPLAY_SUFFIX,
            db_name=issued.replay_account if own_database else request.db_name,
            db_user=issued.replay_account,
            db_password=unseal(self.key, issued.replay_sealed_password),
            cache_dir=None,
            output_dir=run_dir / "output",
            log_path=run_dir / "job.log",
            replay=True,
        )

    # A redelivery after a crash before the ack: a job runs at most once to its end, and a run
    # never gets two endings.
    @skips_if("run.finished", "run.failed")
    async def on_issued(self, stored: StoredEvent) -> list[RunFinished]:
        """Prepare, execute, collect, clean up; the outcome decides finished or failed."""
        event = stored.event
        request = self.request_for(stored)
        request.output_dir.mkdir(parents=True, exist_ok=True)

        async def started() -> None:
            await self.bus.publish(
                new_event(
                    RunStarted(sandbox=f"secd-run-{event.run_id}"),
                    run_id=event.run_id,
                    producer=self.producer,
                    actor=event.actor,
                    project=event.project,
                    cause=event,
                    cause_data=stored.data,
                )
            )

        # A transient fault (the API unreachable) leaves everything in place on purpose: the
        # redelivered event adopts the job still running. An ended run, or one that cannot
        # run, is cleaned up.
        await self.runtime.prepare(request)
        try:
            outcome = await self.runtime.execute(request, started)
        except PermanentError:
            await self._forget(request)
            raise
        left_out: list[str] = []
        try:
            if outcome.started:
                left_out = await self.runtime.collect(request)
                for entry in left_out:
                    log.info("output left out: %s", entry, extra={"run_id": event.run_id})
            # What the job wrote and its log travel on by digest; this machine keeps neither.
            outputs, job_log = await self._store_results(request)
        finally:
            await self._forget(request)
        common = {"outputs": outputs, "log": job_log}
        if outcome.timed_out:
            raise PermanentError(
                f"the job ran longer than runfor ({request.runfor_h:g} h) and was stopped",
                exit_code=outcome.exit_code,
                **common,
            )
        if outcome.reason is not None:
            raise PermanentError(
                outcome.reason,
                exit_code=outcome.exit_code,
                **common,
            )
        if outcome.exit_code != 0:
            raise PermanentError(
                f"the job exited with code {outcome.exit_code}",
                exit_code=outcome.exit_code,
                **common,
            )
        replay = self.replay_request(stored, request)
        replay_outputs, replay_log = ("", "") if replay is None else await self._replay(replay)
        return [
            RunFinished(
                exit_code=0,
                duration_s=round(outcome.duration_s, 3),
                replay_outputs=replay_outputs,
                replay_log=replay_log,
                **common,
            )
        ]

    async def _replay(self, request: RunRequest) -> tuple[str, str]:
        """Run the neighbour replay to its end, whatever its end: what it wrote and its log
        (the airlock holds every file when they differ or are missing, never fails the run)."""
        request.output_dir.mkdir(parents=True, exist_ok=True)

        async def started() -> None:
            log.info("neighbour replay started", extra={"run_id": request.run_id})

        try:
            await self.runtime.prepare(request)
            outcome = await self.runtime.execute(request, started)
            if outcome.started:
                await self.runtime.collect(request)
            if outcome.reason is not None or outcome.exit_code != 0:
                log.info(
                    "neighbour replay ended with code %s: %s",
                    outcome.exit_code,
                    outcome.reason or "exited",
                    extra={"run_id": request.run_id},
                )
            return await self._store_results(request)
        except PermanentError as exc:
            log.warning("neighbour replay did not run: %s", exc, extra={"run_id": request.run_id})
            return "", ""
        finally:
            await self._forget(request)

    async def _store_results(self, request: RunRequest) -> tuple[str, str]:
        """The output folder (as a tree) and the job log into the artifact store."""
        outputs = ""
        if request.output_dir.is_dir():
            outputs = await put_tree(self.store, request.output_dir)
        job_log = ""
        try:
            fd = os.open(request.log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                job_log = await self.store.put_fd(fd)
            finally:
                os.close(fd)
        return outputs, job_log

    async def _forget(self, request: RunRequest) -> None:
        """Clean the runtime up and remove the run's folder here (its results are stored)."""
        await self.runtime.cleanup(request)
        await asyncio.to_thread(shutil.rmtree, request.output_dir.parent, True)
