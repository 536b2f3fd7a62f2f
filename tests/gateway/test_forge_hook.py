"""The embedded forge's real post-receive hook (secd_shared.forge_hook) against the real gateway
over HTTP and a real NATS: what it sends is taken, and what it prints says what happened."""

from __future__ import annotations

import asyncio
import io
import os
import pwd
import sys

import pytest
import uvicorn

from secd.nats_server import free_port
from secd_gateway.app import create_app
from secd_shared import forge_hook
from secd_shared.config import Config, ForgeConfig
from secd_shared.forge import create_repository

from .test_app import TOKEN, ZERO, add_commit


@pytest.fixture
async def gateway(nats_server, admin_bus, tmp_path):
    """A gateway served on a port; alice/model made by secd; this account mapped to alice."""
    me = pwd.getpwuid(os.getuid()).pw_name
    config = Config(state_dir=str(tmp_path), forge=ForgeConfig(accounts={me: "alice"}))
    token_file = tmp_path / "hook-token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    repo = create_repository(
        config.path("forge"), "alice/model", gateway_url=url, token_file=token_file
    )
    bus = await nats_server.bus("gateway")
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, bus, TOKEN), host="127.0.0.1", port=port, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield url, token_file, repo
    server.should_exit = True
    await task
    await bus.close()


async def _hook(url, token_file, lines: str, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    status = await asyncio.to_thread(forge_hook.main, ["hook", url, str(token_file), "alice/model"])
    return status, capsys.readouterr().out


async def test_the_hook_starts_one_run_per_push_and_prints_each_answer(
    gateway, admin_bus, capsys, monkeypatch
):
    url, token_file, repo = gateway
    head = add_commit(repo)
    line = f"{ZERO} {head} refs/heads/main\n"
    status, out = await _hook(url, token_file, line, capsys, monkeypatch)
    assert status == 0, out
    assert "secd: run r" in out and "started for refs/heads/main" in out
    run_id = out.split("secd: run ")[1].split()[0]
    # The same push reported again: the run it started, and nothing new.
    status, out = await _hook(url, token_file, line, capsys, monkeypatch)
    assert status == 0
    assert out.strip() == (
        f"secd: refs/heads/main: push already received as run {run_id}; not started again"
    )
    assert len(await admin_bus.read_run(run_id)) == 1
    # A ref git would refuse, and a commit the repository does not hold: refused, with why.
    status, out = await _hook(
        url, token_file, f"{ZERO} {head} refs/heads//secd/x\n{ZERO} {'f' * 40} refs/heads/b\n",
        capsys, monkeypatch,
    )  # fmt: skip
    assert status == 1
    assert (
        "secd: the gateway refused refs/heads//secd/x: 422 ref 'refs/heads//secd/x' is not a "
        "valid git ref name: it has an empty component" in out
    )
    assert (
        "secd: the gateway refused refs/heads/b: 422 commit ffffffffffff is not in "
        "repository 'alice/model'" in out
    )
