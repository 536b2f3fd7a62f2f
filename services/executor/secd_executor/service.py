"""credentials.issued -> run.started, then run.finished | run.failed.

The researcher's command runs in a bubblewrap sandbox: no network, an unprivileged uid, no
capabilities, a read-only system and source, a writable output, cache and /tmp, and the database
reached only through a relay socket bind-mounted in. Secrets reach it through its environment.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from secd_executor.logship import LogShipper
from secd_executor.relay import DatabaseRelay
from secd_executor.runtime import has_ended
from secd_executor.sandbox import SandboxSpec, run_sandboxed
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config
from secd_shared.events import CredentialsIssued, RunFinished, RunStarted, new_event
from secd_shared.sealing import load_private_key, unseal
from secd_shared.service import producer_for
from secd_shared.worker import PermanentError

__all__ = ["Executor", "setup"]

log = logging.getLogger("secd.executor")

DB_PORTS = {"postgres": 5432, "mysql": 3306, "neo4j": 7687}


class Executor:
    """Runs each issued run in its own sandbox."""

    def __init__(self, config: Config, bus: EventBus) -> None:
        self.bus = bus
        self.runs_dir = config.path(config.executor.runs_dir)
        self.cache_root = config.path(config.executor.cache_root)
        self.uid = config.executor.sandbox_uid
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
        run_dir = self.runs_dir / event.run_id
        output = run_dir / "output"
        # A redelivery after a crash starts over: no half-written output from the earlier try.
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
        run_dir.chmod(0o711)
        # Zero trust: paths from an event are used only inside the folders they belong to.
        _inside(Path(plan.source_path), self.work_dir, "source")
        _inside(Path(plan.env_path), self.envs_dir, "environment")
        cache = None
        if spec.cache_dir:
            researcher_cache = self.cache_root / _safe(event.actor)
            cache = _inside(researcher_cache / spec.cache_dir, researcher_cache, "cache_dir")
            cache.mkdir(parents=True, exist_ok=True)
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
            uid=self.uid,
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
        sandbox = SandboxSpec(
            name=f"secd-{event.run_id}",
            command=list(spec.command),
            source_dir=Path(plan.source_path),
            env_dir=Path(plan.env_path),
            output_dir=output,
            cache_dir=cache,
            mount_path=spec.mount_path,
            db_socket=run_dir / "db.sock",
            db_port=port,
            environment=environment,
            timeout_s=spec.runfor * 3600,
            uid=self.uid,
        )
        log_path = run_dir / "job.log"

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
        finally:
            # The account is revoked next; the relay goes first so no connection outlives the run.
            await relay.close()
            await shipper.stop()
        common = {"output_path": str(output), "log_path": str(log_path)}
        if result.timed_out:
            raise PermanentError(
                f"the job ran longer than runfor ({spec.runfor:g} h) and was stopped",
                exit_code=result.exit_code,
                **common,
            )
        if result.exit_code != 0:
            raise PermanentError(
                f"the job exited with code {result.exit_code}",
                exit_code=result.exit_code,
                **common,
            )
        return [RunFinished(exit_code=0, duration_s=round(result.duration_s, 3), **common)]


def _inside(path: Path, root: Path, what: str) -> Path:
    """`path`, resolved, when it lies under `root`; else the run fails (a forged event)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise PermanentError(f"the run's {what} is not where secd keeps them; not run")
    return resolved


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
