"""ExecutorAPI on this machine: each run in a bubblewrap sandbox (sandbox.py), as its own uid.

prepare: a fresh output folder, a uid of the run's own, the run's environment and source fetched
from the artifact store by digest (the environment unpacked once per digest into this executor's
own folder), the researcher's cache folder (made if new, held against their other runs whose
cache folders overlap). execute: the relay to the run's
database, the sandbox, the job's output shipped to the job-log stream while it runs. collect:
nothing to copy (the sandbox wrote into the output folder), but a run stopped at its disk limit
leaves nothing of it. cleanup: the uid and the cache are let go.

Each step is safe to call twice: a second prepare keeps what the first made, a second execute of
a run that ended in this process returns its outcome again (after a crash of the executor the
worker delivers the event again and the run starts over, with an empty output folder and log).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from secd_executor.cgroups import Cgroups, detect_cgroups
from secd_executor.logship import LogShipper
from secd_executor.relay import DatabaseRelay
from secd_executor.runtime import RunOutcome, RunRequest
from secd_executor.sandbox import SandboxError, SandboxSpec, run_sandboxed
from secd_executor.uids import UidLease, UidPool
from secd_shared.artifacts import ArtifactError, ArtifactStore, check_digest
from secd_shared.bus import EventBus
from secd_shared.config import Config
from secd_shared.safepath import Beneath, PathRefused, empty_tree, open_beneath
from secd_shared.tarballs import TarError, extract
from secd_shared.worker import PermanentError

__all__ = ["KEPT_LOG_BYTES", "BwrapRuntime"]

log = logging.getLogger("secd.executor")

# What is kept of the log of a run stopped at its disk limit.
KEPT_LOG_BYTES = 1024 * 1024


@dataclass
class _Run:
    """What prepare made for one run, until cleanup."""

    uid: UidLease
    env: Beneath | None = None
    source: Beneath | None = None
    cache: Beneath | None = None
    cache_lock: int = -1
    outcome: RunOutcome | None = None
    disk_exceeded: bool = False
    running: asyncio.Task[RunOutcome] | None = field(default=None, repr=False)


class BwrapRuntime:
    """Runs each run in a bubblewrap sandbox on this machine; see the module docstring."""

    def __init__(
        self,
        bus: EventBus,
        store: ArtifactStore,
        *,
        runs_dir: Path,
        cache_root: Path,
        envs_dir: Path,
        uids: UidPool,
        cgroups: Cgroups,
    ) -> None:
        self.bus = bus
        self.store = store
        self.runs_dir = runs_dir
        self.cache_root = cache_root
        self.envs_dir = envs_dir
        self.uids = uids
        self.cgroups = cgroups
        self._runs: dict[str, _Run] = {}

    @classmethod
    def from_config(cls, config: Config, bus: EventBus, store: ArtifactStore) -> BwrapRuntime:
        """The runtime the executor's config describes (its cgroups found once, here)."""
        executor = config.executor
        runs_dir = config.path(executor.runs_dir)
        cgroups = detect_cgroups(executor.cgroups, executor.cgroup_root)
        # Cgroups an earlier executor left (it crashed) hold nothing anyone waits for.
        cgroups.sweep()
        return cls(
            bus,
            store,
            runs_dir=runs_dir,
            cache_root=config.path(executor.cache_root),
            envs_dir=config.path(executor.envs_dir),
            uids=UidPool(executor.uid_first, executor.uid_count, runs_dir / ".uids"),
            cgroups=cgroups,
        )

    # ---- prepare ------------------------------------------------------------------------
    async def prepare(self, request: RunRequest) -> None:
        """A fresh output folder and log, a uid of the run's own, its cache folder held."""
        if request.run_id in self._runs:
            return
        run_dir = request.output_dir.parent
        # A redelivery after a crash starts over: no half-written output from the earlier try.
        shutil.rmtree(request.output_dir, ignore_errors=True)
        request.output_dir.mkdir(parents=True)
        run_dir.chmod(0o711)
        request.log_path.write_bytes(b"")
        run = _Run(uid=await self.uids.lease_async(request.run_id))
        self._runs[request.run_id] = run
        try:
            run.env = await self._environment(request.environment)
            run.source = await self._source(request.source, run_dir)
            if request.cache_dir:
                run.cache, run.cache_lock = await self._hold_cache(
                    request.researcher, request.cache_dir
                )
        except BaseException:
            await self.cleanup(request)
            raise

    async def _environment(self, digest: str) -> Beneath:
        """The run environment `digest`, unpacked once into this executor's own folder."""
        try:
            name = check_digest(digest).removeprefix("sha256:")
        except ArtifactError:
            raise PermanentError(
                "the run names no environment this machine can run (an image needs "
                "executor.kind = kubernetes)"
            ) from None
        folder = self.envs_dir / name
        complete = self.envs_dir / f"{name}.complete"
        if complete.exists():
            return Beneath(self.envs_dir, (name,))
        self.envs_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        lock = await asyncio.to_thread(_lock, self.envs_dir / f"{name}.lock")
        try:
            if not complete.exists():
                await self._unpack(digest, folder, links="anywhere")
                complete.touch()
        finally:
            os.close(lock)
        return Beneath(self.envs_dir, (name,))

    async def _source(self, digest: str, run_dir: Path) -> Beneath:
        """The run's source tree, unpacked into its own folder (`src`, read-only to the job)."""
        try:
            check_digest(digest)
        except ArtifactError:
            raise PermanentError("the run names no source to run; not run") from None
        await self._unpack(digest, run_dir / "src", links="inside")
        return Beneath(run_dir, ("src",))

    async def _unpack(self, digest: str, folder: Path, *, links: str) -> None:
        """Fetch the archive `digest` (checked) and unpack it into `folder`, afresh."""
        archive = folder.with_name(folder.name + ".tar")
        await asyncio.to_thread(_remove, folder, archive)
        try:
            await self.store.get_file(digest, archive)
            await asyncio.to_thread(_extract_file, archive, folder, links)
        except (ArtifactError, TarError) as exc:
            await asyncio.to_thread(_remove, folder)
            raise PermanentError(f"the run's files could not be unpacked: {exc}") from None
        finally:
            await asyncio.to_thread(_remove, archive)

    async def _hold_cache(self, researcher: str, cache_dir: str) -> tuple[Beneath, int]:
        """The researcher's cache folder (made if new), and a lock on its folder tree."""
        folder = self.cache_root / _safe(researcher)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            cache = Beneath.of(folder, cache_dir)
            os.close(open_beneath(folder, list(cache.relative), create=True))
        except PathRefused as exc:
            raise PermanentError(f"cache_dir {cache_dir!r} cannot be used: {exc}") from None
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
                    return cache, lock
                except BlockingIOError:
                    await asyncio.sleep(0.5)
        except BaseException:
            os.close(lock)
            raise

    # ---- execute ------------------------------------------------------------------------
    async def execute(
        self, request: RunRequest, on_start: Callable[[], Awaitable[None]]
    ) -> RunOutcome:
        """Run the job in its sandbox (or return the outcome of the run that already ended)."""
        run = self._runs.get(request.run_id)
        if run is None:
            raise RuntimeError(f"execute before prepare for {request.run_id}")
        if run.outcome is not None:
            return run.outcome
        if run.running is None:
            run.running = asyncio.ensure_future(self._execute(request, run, on_start))
        outcome = await asyncio.shield(run.running)
        run.outcome = outcome
        return outcome

    async def _execute(
        self, request: RunRequest, run: _Run, on_start: Callable[[], Awaitable[None]]
    ) -> RunOutcome:
        # The run's folders are this executor's own, reached without following a link.
        assert run.env is not None and run.source is not None
        source, env = run.source, run.env
        run_dir = request.output_dir.parent
        socket_path = run_dir / "db.sock"
        target = (
            {"socket": request.db_socket}
            if request.db_socket
            else {"host": request.db_host, "port": request.db_port}
        )
        # The relay admits only this run's account (and database): see relay.py.
        relay = DatabaseRelay(
            socket_path,
            account=request.db_user,
            kind=request.db_kind,
            database=request.db_name,
            uid=run.uid.uid,
            **target,
        )
        environment = {
            "DB_USER": request.db_user,
            "DB_PASS": request.db_password,
            # The forwarder inside the sandbox listens here and relays to the socket below.
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(request.db_port),
            "DB_NAME": request.db_name,
        }
        if request.seed:
            environment["SECD_SEED"] = request.seed
        if run.cache is not None:
            # Where secd.cache finds the mounted cache; without it, it caches nothing.
            environment["SECD_CACHE_DIR"] = request.mount_path
        spec = SandboxSpec(
            name=f"secd-{request.run_id}",
            command=list(request.command),
            source_dir=source,
            env_dir=env,
            output_dir=Beneath(run_dir, (request.output_dir.name,)),
            cache_dir=run.cache,
            mount_path=request.mount_path,
            db_socket=Beneath(run_dir, (socket_path.name,)),
            db_port=request.db_port,
            environment=environment,
            timeout_s=request.runfor_s,
            uid=run.uid.uid,
            limits=request.limits,
            cgroups=self.cgroups,
        )
        # A replay's log is for officers only: never on the job-log stream.
        shipper = None if request.replay else LogShipper(self.bus, request.run_id, request.log_path)
        await relay.start()
        if shipper is not None:
            shipper.start()
        try:
            result = await run_sandboxed(spec, request.log_path, on_start=on_start)
        except SandboxError as exc:
            raise PermanentError(f"the sandbox could not start: {exc}") from None
        finally:
            # The account is revoked next; the relay goes first so no connection outlives the run.
            await relay.close()
            if shipper is not None:
                await shipper.stop()
        run.disk_exceeded = result.limit == "disk"
        return RunOutcome(
            exit_code=result.exit_code,
            duration_s=result.duration_s,
            reason=result.limit_reason,
            timed_out=result.timed_out,
        )

    # ---- collect, cleanup ---------------------------------------------------------------
    async def collect(self, request: RunRequest) -> list[str]:
        """Outputs are in place already; a run past its disk limit leaves nothing of it."""
        run = self._runs.get(request.run_id)
        if run is not None and run.disk_exceeded:
            # Nothing of a run beyond its disk limit stays on the host: its output and the
            # cache folder it filled are emptied, its log cut to the part the limit allows.
            await asyncio.to_thread(_drop_excess, request.output_dir, run.cache, request.log_path)
            return ["all outputs: the run passed its disk limit, so none are kept"]
        return []

    async def cleanup(self, request: RunRequest) -> None:
        """Let go of the run's uid and cache; what is already let go is skipped."""
        run = self._runs.pop(request.run_id, None)
        if run is None:
            return
        if run.running is not None and not run.running.done():
            run.running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.running
        if run.cache_lock >= 0:
            os.close(run.cache_lock)
        run.uid.release()
        (request.output_dir.parent / "db.sock").unlink(missing_ok=True)

    async def close(self) -> None:
        """Nothing outlives the process: the kernel drops every lock."""


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


def _extract_file(archive: Path, folder: Path, links: str) -> None:
    with open(archive, "rb") as source:
        extract(source, folder, links=links)


def _lock(path: Path) -> int:
    """An exclusive flock on `path` (blocking); the caller closes the descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)


def _safe(researcher: str) -> str:
    if not researcher.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise PermanentError(f"researcher name {researcher!r} cannot name a cache folder")
    return researcher
