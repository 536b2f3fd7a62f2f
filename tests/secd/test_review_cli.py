"""`secd review list|show|approve|reject` against the gateway served by uvicorn (a real NATS):
the officer's token from a file or the environment, the held file by name or digest, and every
refusal (401, 403, 404, 409, 422) said in words."""

from __future__ import annotations

import pytest

from secd.cli import main
from tests.gateway.reviewworld import (
    EVIDENCE,
    TOKENS,
    ServedGateway,
    officer_config,
    write_held_run,
)


@pytest.fixture
def served(nats_server, admin_bus, tmp_path):
    with ServedGateway(nats_server, officer_config(tmp_path / "officers")) as gateway:
        yield gateway


def review(capsys, served, tmp_path, *args: str) -> tuple[int, str, str]:
    code = main(["--state-dir", str(tmp_path), "review", *args, "--gateway", served.url])
    out, err = capsys.readouterr()
    return code, out, err


def token_file(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.token"
    path.write_text(TOKENS[name] + "\n")
    return str(path)


async def test_an_officer_lists_shows_and_approves(served, admin_bus, tmp_path, capsys):
    held = await write_held_run(admin_bus)
    one = token_file(tmp_path, "officer-1")
    code, out, _ = review(capsys, served, tmp_path, "list", "--token-file", one)
    assert code == 0 and held.run_id in out and "alice" in out
    code, out, _ = review(capsys, served, tmp_path, "show", held.run_id, "--token-file", one)
    assert code == 0
    assert "researcher alice" in out and "tables granted: patients" in out
    assert EVIDENCE in out and "0 of 2 approvals recorded" in out
    code, out, _ = review(
        capsys, served, tmp_path, "approve", held.run_id, "counts.csv", "--token-file", one,
        "--reason", "counts of 3 are fine here",
    )  # fmt: skip
    assert code == 0 and "recorded: approve 'counts.csv'" in out
    (vote,) = [
        s.event.payload
        for s in await admin_bus.read_run(held.run_id)
        if s.event.type == "review.recorded"
    ]
    assert (vote.officer, vote.sha256, vote.decision) == ("officer-1", held.table, "approve")
    code, _, err = review(
        capsys, served, tmp_path, "reject", held.run_id, held.table[:10], "--token-file", one,
        "--reason", "second thoughts",
    )  # fmt: skip
    assert code == 1 and "already decided (409)" in err


async def test_refusals_are_said_in_words(served, admin_bus, tmp_path, capsys, monkeypatch):
    held = await write_held_run(admin_bus)
    monkeypatch.delenv("SECD_OFFICER_TOKEN", raising=False)
    code, _, err = review(capsys, served, tmp_path, "list")
    assert code == 1 and "SECD_OFFICER_TOKEN" in err and "--token-file" in err
    monkeypatch.setenv("SECD_OFFICER_TOKEN", "not-a-token-at-all")
    code, _, err = review(capsys, served, tmp_path, "list")
    assert code == 1 and "(401)" in err and "not-a-token-at-all" not in err
    monkeypatch.setenv("SECD_OFFICER_TOKEN", TOKENS["mallory"])
    code, _, err = review(capsys, served, tmp_path, "list")
    assert code == 1 and "refused (403)" in err and "officers' group" in err
    monkeypatch.setenv("SECD_OFFICER_TOKEN", TOKENS["alice"])
    code, _, err = review(
        capsys, served, tmp_path, "approve", held.run_id, "counts.csv", "--reason", "mine"
    )
    assert code == 1 and "refused (403)" in err and "own run" in err
    monkeypatch.setenv("SECD_OFFICER_TOKEN", TOKENS["officer-2"])
    code, _, err = review(capsys, served, tmp_path, "show", "r00000000000deadbeef")
    assert code == 1 and "not found (404): no such run" in err
    code, _, err = review(capsys, served, tmp_path, "reject", held.run_id, "counts.csv")
    assert code == 1 and "not accepted (422)" in err and "needs a reason" in err
    code, _, err = review(capsys, served, tmp_path, "approve", held.run_id, "nope.csv")
    assert code == 1 and "is no held file" in err and "counts.csv" in err
    assert not [
        s for s in await admin_bus.read_run(held.run_id) if s.event.type == "review.recorded"
    ]
