"""`secd review fetch` on the secure side (a real NATS, the gateway served by uvicorn): the read
is recorded with the gateway as review.fetched, the file comes from the artifact store as the
read-only `reviewer` identity, checked against its sha256, into a new file (never over one,
never to standard output)."""

from __future__ import annotations

import asyncio
import json

import pytest

from secd.cli import main
from secd_shared.artifacts import NatsArtifacts
from tests.gateway.reviewworld import TOKENS, ServedGateway, officer_config, write_held_run


@pytest.fixture
def served(nats_server, admin_bus, tmp_path):
    with ServedGateway(nats_server, officer_config(tmp_path / "officers")) as gateway:
        yield gateway


@pytest.fixture
def state(nats_server, tmp_path):
    """A state folder as `secd up` leaves it: secd.toml, and the identities' passwords."""
    root = tmp_path / "state"
    (root / "secrets").mkdir(parents=True)
    (root / "secd.toml").write_text(f'state_dir = "{root}"\n[nats]\nurl = "{nats_server.url}"\n')
    (root / "secrets" / "stack.json").write_text(json.dumps({"nats": nats_server.passwords}))
    return root


async def test_an_officer_reads_a_held_file_and_the_log_says_so(
    served, state, nats_server, admin_bus, tmp_path, capsys, monkeypatch
):
    held = await write_held_run(admin_bus)
    executor = await nats_server.bus("executor")
    await NatsArtifacts(executor.js).put_bytes(b"table")  # the held counts.csv's content
    await executor.close()
    monkeypatch.setenv("SECD_OFFICER_TOKEN", TOKENS["officer-1"])
    dest = tmp_path / "read" / "counts.csv"

    async def fetch(*args: str) -> tuple[int, str, str]:
        # In a thread: the command runs its own event loop, as it does in a shell.
        code = await asyncio.to_thread(
            main,
            ["--state-dir", str(state), "review", "fetch", held.run_id, "counts.csv",
             "--gateway", served.url, *args],
        )  # fmt: skip
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await fetch("-o", str(dest))
    assert code == 0, err
    assert dest.read_bytes() == b"table" and dest.stat().st_mode & 0o777 == 0o600
    assert "review.fetched" in out and "table" not in out.replace("review", "")
    (read,) = [
        s.event for s in await admin_bus.read_run(held.run_id) if s.event.type == "review.fetched"
    ]
    assert (read.actor, read.payload.officer, read.payload.sha256) == (
        "officer-1", "officer-1", held.table,
    )  # fmt: skip
    # Never over a file, never to standard output: nothing more is recorded then.
    code, _, err = await fetch("-o", str(dest))
    assert code == 1 and "exists: nothing is overwritten" in err
    code, out, err = await fetch("-o", "-")
    assert code == 1 and "never writes to standard output" in err and out == ""
    reads = [s for s in await admin_bus.read_run(held.run_id) if s.event.type == "review.fetched"]
    assert len(reads) == 1


async def test_the_researcher_cannot_fetch_her_own_runs_file(
    served, state, admin_bus, tmp_path, capsys, monkeypatch
):
    held = await write_held_run(admin_bus)
    monkeypatch.setenv("SECD_OFFICER_TOKEN", TOKENS["alice"])
    dest = tmp_path / "mine.csv"
    code = main(
        ["--state-dir", str(state), "review", "fetch", held.run_id, "counts.csv",
         "--gateway", served.url, "-o", str(dest)]
    )  # fmt: skip
    assert code == 1 and "their own run" in capsys.readouterr().err
    assert not dest.exists()
    assert not [
        s for s in await admin_bus.read_run(held.run_id) if s.event.type == "review.fetched"
    ]


async def test_secd_review_lira_records_the_request(served, admin_bus, tmp_path, capsys):
    from tests.gateway.reviewworld import held_model_run_events, write_run

    run_id, run = held_model_run_events("c" * 64)
    await write_run(admin_bus, run)
    token = tmp_path / "officer-2.token"
    token.write_text(TOKENS["officer-2"])
    args = ["--state-dir", str(tmp_path), "review", "lira", run_id, "out/model.skops"]
    code = await asyncio.to_thread(
        main, [*args, "--gateway", served.url, "--token-file", str(token)]
    )
    out, err = capsys.readouterr()
    assert code == 0 and "requested: LiRA on 'out/model.skops'" in out, err
    code = await asyncio.to_thread(
        main, ["--state-dir", str(tmp_path), "review", "show", run_id, "--gateway", served.url,
               "--token-file", str(token)],
    )  # fmt: skip
    assert code == 0 and "lira asked for: the airlock is running it" in capsys.readouterr().out
    (request,) = [
        s.event for s in await admin_bus.read_run(run_id) if s.event.type == "review.requested"
    ]
    assert (request.payload.officer, request.payload.attack) == ("officer-2", "lira")
