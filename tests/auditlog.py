"""The audit tests' own NATS server, so its SECD stream holds only what these tests write.

A pytest plugin of the suite (tests/conftest.py): the audit command's tests (tests/secd), the log's
integrity and protection (tests/shared) and the checkpointer's (tests/checkpointer) use it."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js.api import SubjectTransform

from secd_shared.identities import BOOTSTRAP_USER
from secd_shared.integrity import generate_signing_key, load_signing_key
from secd_shared.stream import ensure_stream, stream_config
from tests.conftest import NatsServer, start_test_nats


def start_nats(root: Path) -> NatsServer:
    """A nats-server with secd's users and its JetStream store under `root` (restartable: the
    passwords are kept there too, so a server started again on `root` takes the same users)."""
    root.mkdir(parents=True, exist_ok=True)
    passwords_file = root / "passwords.json"
    passwords = json.loads(passwords_file.read_text()) if passwords_file.exists() else None
    server = start_test_nats(root, passwords)
    passwords_file.write_text(json.dumps(server.passwords))
    return server


def stop_nats(server: NatsServer) -> None:
    """Stop a server started by start_nats."""
    server.stop()


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
