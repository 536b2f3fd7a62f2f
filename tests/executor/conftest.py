"""Fixtures for the executor's tests: a real run venv, real sandboxes, real databases."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from secd_executor.sandbox import SandboxResult, SandboxSpec, run_sandboxed
from tests.helpers import is_root, need

PG_HOST, PG_PORT = "127.0.0.1", 5432
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"
SANDBOX_UID = 65534


def pg_select_one(sock: socket.socket, user: str = "postgres") -> str:
    """Speak just enough PostgreSQL wire protocol over `sock` to run SELECT 1; return the value."""
    import struct

    def recv_exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def messages_until_ready() -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            kind, length = struct.unpack("!cI", recv_exact(5))
            body = recv_exact(length - 4)
            if kind == b"E":
                raise RuntimeError(body.decode(errors="replace"))
            out.append((kind, body))
            if kind == b"Z":
                return out

    # SSLRequest first, as real drivers do; "N" means carry on in plain text on this socket.
    sock.sendall(struct.pack("!II", 8, 80877103))
    if recv_exact(1) != b"N":
        raise RuntimeError("server wants TLS")
    params = f"user\0{user}\0database\0postgres\0\0".encode()
    sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
    auth = messages_until_ready()
    if auth[0] != (b"R", struct.pack("!I", 0)):
        raise RuntimeError(f"unexpected authentication: {auth[0]!r}")
    sql = b"SELECT 1\0"
    sock.sendall(b"Q" + struct.pack("!I", 4 + len(sql)) + sql)
    for kind, body in messages_until_ready():
        if kind == b"D":
            (size,) = struct.unpack("!I", body[2:6])
            return body[6 : 6 + size].decode()
    raise RuntimeError("no data row")


# Shipped into sandboxed jobs verbatim, so the job and the host tests share one client.
PG_CLIENT_SOURCE = "import socket\n\n" + textwrap.dedent(inspect.getsource(pg_select_one))


def _can_connect(address: tuple[str, int] | str) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(address)
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres() -> tuple[str, int]:
    """The local PostgreSQL server (trust auth); skip without it (fail under CI)."""
    need(_can_connect((PG_HOST, PG_PORT)), f"no PostgreSQL on {PG_HOST}:{PG_PORT}")
    return PG_HOST, PG_PORT


@pytest.fixture(scope="session")
def mariadb() -> str:
    """The local MariaDB socket; skip without it (fail under CI)."""
    need(_can_connect(MARIADB_SOCKET), f"no MariaDB at {MARIADB_SOCKET}")
    return MARIADB_SOCKET


@pytest.fixture(scope="session")
def run_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare virtualenv (no pip) standing in for a built run environment."""
    need(is_root(), "the sandbox launcher must run as root")
    env_dir = tmp_path_factory.mktemp("runenv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    return env_dir


@dataclass
class JobRun:
    """What a finished sandboxed job left behind."""

    result: SandboxResult
    log: str
    output: Path
    cache: Path


@dataclass
class Jobs:
    """Runs a Python snippet as /work/main.py in a sandbox rooted in a test's tmp_path."""

    root: Path
    env_dir: Path

    def spec(self, code: str, **overrides: object) -> SandboxSpec:
        """Write the job's code and return a spec for it (source, output and cache under root)."""
        src = self.root / "src"
        src.mkdir(exist_ok=True)
        (src / "main.py").write_text(textwrap.dedent(code))
        for d in ("output", "cache"):
            (self.root / d).mkdir(exist_ok=True)
        spec = SandboxSpec(
            name=f"secd-test-{self.root.name}",
            command=["python", "main.py"],
            source_dir=src,
            env_dir=self.env_dir,
            output_dir=self.root / "output",
            cache_dir=self.root / "cache",
            timeout_s=60,
        )
        return replace(spec, **overrides)

    @property
    def log_path(self) -> Path:
        """Where the job's stdout and stderr go."""
        return self.root / "job.log"

    async def run(self, code: str, **overrides: object) -> JobRun:
        """Run the job to completion."""
        result = await run_sandboxed(self.spec(code, **overrides), self.log_path)
        return self.finished(result)

    def finished(self, result: SandboxResult) -> JobRun:
        """Bundle a result with the job's log and directories."""
        log = self.log_path.read_text() if self.log_path.exists() else ""
        return JobRun(result, log, self.root / "output", self.root / "cache")


@pytest.fixture
def jobs(tmp_path: Path, run_env: Path) -> Jobs:
    """A job runner for this test."""
    return Jobs(tmp_path, run_env)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll predicate (blocking is fine: the job runs in its own processes) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the job")
        time.sleep(0.02)


def host_cmdlines() -> Iterator[tuple[int, bytes]]:
    """(pid, raw cmdline) of every process on the host we can see."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    yield int(entry.name), f.read()
            except OSError:
                continue


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[Path]:
    """A listening Unix socket nobody answers on: enough for the forwarder to start."""
    path = tmp_path / "dummy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        yield path
