"""credentials.issued -> run.started, then run.finished | run.failed.

The researcher's command runs in a bubblewrap sandbox: no network, an unprivileged uid, no
capabilities, a read-only system and source, a writable output, cache and /tmp, and the database
reached only through a relay socket bind-mounted in. Secrets reach it through its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path

from secd_executor.cgroups import detect_cgroups
from secd_executor.logship import LogShipper
from secd_executor.relay import DatabaseRelay
from secd_executor.runtime import has_ended
from secd_executor.sandbox import SandboxError, SandboxSpec, run_sandboxed
from secd_executor.uids import UidPool
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config
from secd_shared.events import CredentialsIssued, RunFinished, RunStarted, new_event
from secd_shared.limits import resolve_limits
from secd_shared.safepath import Beneath, PathRefused, empty_tree, open_beneath
from secd_shared.sealing import load_private_key, unseal
from secd_shared.service import producer_for
from secd_shared.worker import PermanentError

__all__ = ["Executor", "setup"]

log = logging.getLogger("secd.executor")

DB_PORTS = {"postgres": 5432, "mysql": 3306, "neo4j": 7687}
# What is kept of the log of a run stopped at its disk limit.
KEPT_LOG_BYTES = 1024 * 1024


class Executor:
    """Runs each issued run in its own sandbox, as its own uid, within its limits."""

    def __init__(self, config: Config, bus: EventBus) -> None:
        self.bus = bus
        self.runs_dir = config.path(config.executor.runs_dir)
        self.cache_root = config.path(config.executor.cache_root)
        self.uids = UidPool(
            config.executor.uid_first, config.executor.uid_count, self.runs_dir / ".uids"
        )
        self.limits = config.limits
        self.cgroups = detect_cgroups(config.executor.cgroups, config.executor.cgroup_root)
        self.cgroups.sweep()
        self.key = load_private_key(config.path(config.executor.private_key_file))
        self.producer = producer_for("executor")
        self.work_dir = config.path(config.builder.work_dir)
        self.envs_dir = config.path(config.builder.envs_dir)

    async def on_issued(self, stored: StoredEvent) -> list[RunFinished]:
        """Run the researcher's command; its exit code decides finished or failed."""
        event = stored.event
        issued = event.payload
        assert isinstance(issued, CredentialsIssued)
        plan, spec = issued.plan, issued.plan.spec
        if await has_ended(self.bus, event.run_id):
            return []
        # Zero trust: paths from an event are used only inside the folders they belong to,
        # and reached without following a link (secd_shared.safepath).
        source = _below(plan.source_path, self.work_dir, "source")
        env = _below(plan.env_path, self.envs_dir, "environment")
        run_dir = self.runs_dir / event.run_id
        output = run_dir / "output"
        # A redelivery after a crash starts over: no half-written output from the earlier try.
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        run_dir.chmod(0o711)
        lease = await self.uids.lease_async(event.run_id)
        try:
            async with self._cache_for(event.actor, spec.cache_dir) as cache:
                return await self._run(stored, source, env, cache, lease.uid)
        finally:
            lease.release()

    @contextlib.asynccontextmanager
    async def _cache_for(self, researcher: str, cache_dir: str | None):
        """The researcher's cache folder (made if new), held against their other runs."""
        if not cache_dir:
            yield None
            return
        folder = self.cache_root / _safe(researcher)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            cache = Beneath.of(folder, cache_dir)
            fd = open_beneath(folder, list(cache.relative), create=True)
        except PathRefused as exc:
            raise PermanentError(f"cache_dir {cache_dir!r} cannot be used: {exc}") from None
        os.close(fd)
        # One run at a time per cache folder tree (a and a/b are one tree): each run owns its
        # cache (its own uid) while it runs, and no other run can move links into it meanwhile.
        locks = self.runs_dir / ".cache-locks"
        locks.mkdir(exist_ok=True, mode=0o700)
        tree = hashlib.sha256(cache.relative[0].encode()).hexdigest()[:16]
        lock = os.open(locks / f"{_safe(researcher)}.{tree}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.5)
            yield cache
        finally:
            os.close(lock)

    async def _run(
        self, stored: StoredEvent, source: Beneath, env: Beneath, cache: Beneath | None, uid: int
    ) -> list[RunFinished]:
        event = stored.event
        issued = event.payload
        assert isinstance(issued, CredentialsIssued)
        spec = issued.plan.spec
        run_dir = self.runs_dir / event.run_id
        port = DB_PORTS[issued.address.kind]
        address = issued.address
        # A Unix socket when the database has one (no TCP hop, no port to guess), else TCP.
        target = (
            {"socket": address.socket}
            if address.socket
            else {"host": address.host, "port": address.port}
        )
        # The relay admits only this run's account (and database): see relay.py.
        relay = DatabaseRelay(
            run_dir / "db.sock",
            account=issued.account,
            kind=address.kind,
            database=address.database,
            uid=uid,
            **target,
        )
        environment = {
            "DB_USER": issued.account,
            "DB_PASS": unseal(self.key, issued.sealed_password),
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(port),
            "DB_NAME": issued.address.database,
        }
        if cache is not None:
            # Where secd.cache finds the mounted cache; without it, it caches nothing (no fallback).
            environment["SECD_CACHE_DIR"] = spec.mount_path
        limits = resolve_limits(self.limits, spec.limits)
        sandbox = SandboxSpec(
            name=f"secd-{event.run_id}",
            command=list(spec.command),
            source_dir=source,
            env_dir=env,
            output_dir=Beneath(run_dir, ("output",)),
            cache_dir=cache,
            mount_path=spec.mount_path,
            db_socket=Beneath(run_dir, ("db.sock",)),
            db_port=port,
            environment=environment,
            timeout_s=spec.runfor * 3600,
            uid=uid,
            limits=limits,
            cgroups=self.cgroups,
        )
        log_path = run_dir / "job.log"
        output = run_dir / "output"

        async def started() -> None:
            await self.bus.publish(
                new_event(
                    RunStarted(sandbox=sandbox.name),
                    run_id=event.run_id,
                    producer=self.producer,
                    actor=event.actor,
                    project=event.project,
                    cause=event,
                    cause_data=stored.data,
                )
            )

        # Like the output, the log of an earlier, interrupted attempt is not this run's log.
        log_path.write_bytes(b"")
        shipper = LogShipper(self.bus, event.run_id, log_path)
        await relay.start()
        shipper.start()
        try:
            result = await run_sandboxed(sandbox, log_path, on_start=started)
        except SandboxError as exc:
            raise PermanentError(f"the sandbox could not start: {exc}") from None
        finally:
            # The account is revoked next; the relay goes first so no connection outlives the run.
            await relay.close()
            await shipper.stop()
        common = {"output_path": str(output), "log_path": str(log_path)}
        if result.limit == "disk":
            # Nothing of a run beyond its disk limit stays on the host: its output and the
            # cache folder it filled are emptied, its log cut to the part the limit allows.
            await asyncio.to_thread(_drop_excess, output, cache, log_path)
        if result.timed_out:
            raise PermanentError(
                f"the job ran longer than runfor ({spec.runfor:g} h) and was stopped",
                exit_code=result.exit_code,
                **common,
            )
        if result.limit_reason is not None:
            raise PermanentError(result.limit_reason, exit_code=result.exit_code, **common)
        if result.exit_code != 0:
            raise PermanentError(
                f"the job exited with code {result.exit_code}",
                exit_code=result.exit_code,
                **common,
            )
        return [RunFinished(exit_code=0, duration_s=round(result.duration_s, 3), **common)]


def _drop_excess(output: Path, cache: Beneath | None, log_path: Path) -> None:
    """Empty the run's output and cache folder (links never followed); keep the log's start."""
    for folder in (Beneath(output.parent, (output.name,)), cache):
        if folder is None:
            continue
        try:
            fd = open_beneath(folder.root, list(folder.relative))
        except (PathRefused, OSError):
            continue
        try:
            empty_tree(fd)
        finally:
            os.close(fd)
    with open(log_path, "r+b") as log_file:
        log_file.truncate(min(os.fstat(log_file.fileno()).st_size, KEPT_LOG_BYTES))
        log_file.seek(0, os.SEEK_END)
        log_file.write(
            b"\n[secd: the rest of the log was dropped: the run passed its disk limit]\n"
        )


def _below(path: str, root: Path, what: str) -> Beneath:
    """`path` from an event as `root` plus the parts below it; the run fails if it is not."""
    try:
        relative = Path(path).relative_to(root)
        return Beneath.of(root, str(relative))
    except (ValueError, PathRefused):
        raise PermanentError(f"the run's {what} is not where secd keeps them; not run") from None


def _safe(researcher: str) -> str:
    if not researcher.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise PermanentError(f"researcher name {researcher!r} cannot name a cache folder")
    return researcher


async def setup(config: Config, bus: EventBus):
    """The executor's one consumer: a bubblewrap sandbox, or a Kubernetes Job (executor.kind)."""
    if config.executor.kind == "kubernetes":
        from secd_executor.kubernetes import KubernetesExecutor
        from secd_executor.runtime import RuntimeExecutor

        runtime = KubernetesExecutor.from_config(config)
        runtime.start_reaper()
        return {"executor": RuntimeExecutor(config, bus, runtime).on_issued}, runtime.close
    return {"executor": Executor(config, bus).on_issued}
