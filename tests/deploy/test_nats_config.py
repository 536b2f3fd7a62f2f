"""deploy/nats/nats.conf: generated from secd's identities, and a real nats-server runs it."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from secd_shared.identities import BOOTSTRAP_USER, IDENTITIES
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "deploy" / "tools" / "render_nats_config.py"
CONF = ROOT / "deploy" / "nats" / "nats.conf"


def _tool():
    """The generator script, loaded as a module."""
    spec = importlib.util.spec_from_file_location("render_nats_config", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_config_is_what_the_generator_renders() -> None:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    text = CONF.read_text()
    for user in [BOOTSTRAP_USER, *IDENTITIES]:
        assert f'"user": "{user}"' in text
    assert 'password": "' not in text  # every password is an environment reference


@pytest.fixture
def deployed_nats(tmp_path: Path):
    """nats-server with the deploy config as committed; only the store and ports are local."""
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert binary
    conf = tmp_path / "nats.conf"
    text = CONF.read_text()
    assert text.count('"/data/jetstream"') == 1 and text.count("http: 8222") == 1
    monitor = free_port()
    conf.write_text(
        text.replace('"/data/jetstream"', f'"{tmp_path / "js"}"').replace(
            "http: 8222", f'http: "127.0.0.1:{monitor}"'
        )
    )
    passwords = {user: f"pw-{user}-{os.urandom(4).hex()}" for user in [BOOTSTRAP_USER, *IDENTITIES]}
    env = {"PATH": os.environ["PATH"]}
    env |= {_tool().password_variable(user): pw for user, pw in passwords.items()}
    port = free_port()
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}", passwords
    process.terminate()
    process.wait(10)


async def test_services_log_in_with_their_secret_and_only_do_their_job(deployed_nats) -> None:
    url, passwords = deployed_nats
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(
        url,
        user="verifier",
        password=passwords["verifier"],
        inbox_prefix=b"_INBOX_verifier",
        error_cb=on_error,
        allow_reconnect=False,
    )
    await nc.publish("secd.run.r1.push_verified", b"{}")
    await nc.publish("secd.run.r1.credentials_issued", b"{}")  # not the verifier's to write
    await nc.flush()
    await asyncio.sleep(0.2)
    await nc.close()
    assert any("credentials_issued" in str(e) for e in errors), errors
    assert not any("push_verified" in str(e) for e in errors), errors
    with pytest.raises(Exception):  # noqa: B017 - nats raises its own family of errors
        await nats.connect(
            url, user="verifier", password="wrong", allow_reconnect=False, connect_timeout=2,
            max_reconnect_attempts=0,
        )  # fmt: skip
