"""deploy/nats/nats.conf: generated from secd's identities, and a real nats-server runs it."""

from __future__ import annotations

import asyncio
import importlib.util
import json
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


CLUSTER_CONF = ROOT / "deploy" / "nats" / "nats-cluster.conf"


def _start_node(conf: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    """nats-server with `conf` and `env`, clients on `port`, its log beside the config."""
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    assert binary
    with open(conf.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [binary, "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)],
            env={"PATH": os.environ["PATH"], **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def deployed_cluster(tmp_path: Path):
    """Three nats-server nodes from the committed cluster config, as the StatefulSet runs it:
    each its own pod name and store; the routes and ports point at this machine."""
    tool = _tool()
    users = [BOOTSTRAP_USER, *IDENTITIES, tool.ROUTE_USER]
    passwords = {user: f"pw-{user}-{os.urandom(4).hex()}" for user in users}
    route_ports = [free_port() for _ in range(tool.CLUSTER_SIZE)]
    routes = {
        tool.route_variable(n): f"nats://route:{passwords['route']}@127.0.0.1:{port}"
        for n, port in enumerate(route_ports, 1)
    }
    text = CLUSTER_CONF.read_text()
    assert text.count('"0.0.0.0:6222"') == 1 and text.count("http: 8222") == 1
    nodes, ports = [], []
    for i, route_port in enumerate(route_ports):
        conf = tmp_path / f"nats-{i}.conf"
        conf.write_text(
            text.replace('"/data/jetstream"', f'"{tmp_path / f"js-{i}"}"')
            .replace('"0.0.0.0:6222"', f'"127.0.0.1:{route_port}"')
            .replace("http: 8222", f'http: "127.0.0.1:{free_port()}"')
        )
        env = {tool.password_variable(user): pw for user, pw in passwords.items()}
        env |= routes | {"SECD_NATS_SERVER_NAME": f"nats-{i}"}
        ports.append(free_port())
        nodes.append(_start_node(conf, env, ports[-1]))
    deadline = time.monotonic() + 10
    for node, port in zip(nodes, ports, strict=True):
        while True:
            assert node.poll() is None, f"a node exited: {tmp_path}/nats-*.log"
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)
    yield [f"nats://127.0.0.1:{port}" for port in ports], passwords, route_ports, tmp_path
    for node in nodes:
        node.terminate()
    for node in nodes:
        node.wait(10)


async def test_the_cluster_config_makes_a_jetstream_cluster_of_three(deployed_cluster) -> None:
    from nats.js.api import StreamConfig

    from secd_shared.stream import stream_config

    urls, passwords, route_ports, tmp_path = deployed_cluster
    nc = await nats.connect(urls, user=BOOTSTRAP_USER, password=passwords[BOOTSTRAP_USER])
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 30
        while True:  # until the nodes have routed and elected a meta leader
            try:
                await js.add_stream(stream_config("SECD", replicas=3))
                break
            except (nats.errors.TimeoutError, nats.js.errors.APIError):
                assert time.monotonic() < deadline, "no JetStream cluster within 30 s"
                await asyncio.sleep(0.2)
        info = await js.stream_info("SECD")
        assert info.config.num_replicas == 3
        assert {info.cluster.leader, *(r.name for r in info.cluster.replicas)} == {
            "nats-0", "nats-1", "nats-2",
        }  # fmt: skip

        # A fourth server that does not know the route password is not let in: no stream can
        # have four replicas, and the nodes logged why.
        rogue_conf = tmp_path / "rogue.conf"
        cluster = {
            "name": "secd",
            "listen": f"127.0.0.1:{free_port()}",
            "routes": [f"nats://route:guess@127.0.0.1:{route_ports[0]}"],
        }
        rogue_conf.write_text(
            f'server_name: "rogue"\njetstream {{ store_dir: "{tmp_path / "js-rogue"}" }}\n'
            f"cluster {json.dumps(cluster)}\n"
        )
        rogue = _start_node(rogue_conf, {}, free_port())
        try:
            await asyncio.sleep(2)
            with pytest.raises(nats.js.errors.APIError, match="no suitable peers"):
                await js.add_stream(StreamConfig(name="FOUR", subjects=["four.>"], num_replicas=4))
        finally:
            rogue.terminate()
            rogue.wait(10)
        assert "authentication error" in (tmp_path / "nats-0.log").read_text()
    finally:
        await nc.close()
