"""The real pipeline's log verifies clean, signed by the stack's own checkpointer."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess

import pytest

from secd.cli import main
from secd.demo import run_demo
from secd.stack import SERVICES, Stack

pytestmark = pytest.mark.timeout(300)


def test_secd_up_makes_the_checkpointer_key_and_identity(tmp_path):
    state = tmp_path / "state"
    Stack(state).prepare()
    key, public = state / "secrets" / "checkpointer.key", state / "secrets" / "checkpointer.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and public.read_text().strip()
    assert "checkpointer" in SERVICES
    assert f'"private_key_file" = "{key}"' in (state / "secd.toml").read_text()
    # A state folder from before the checkpointer gets its NATS password at the next start.
    first_public = public.read_text()
    secrets_file = state / "secrets" / "stack.json"
    secret = json.loads(secrets_file.read_text())
    del secret["nats"]["checkpointer"]
    secrets_file.write_text(json.dumps(secret))
    Stack(state).prepare()
    assert json.loads(secrets_file.read_text())["nats"]["checkpointer"]
    assert public.read_text() == first_public  # the key pair is made once, then kept
    assert '"user": "checkpointer"' in (state / "nats" / "nats.conf").read_text()


def test_the_demos_log_verifies_clean(tmp_path, capsys):
    state = tmp_path / "demo"
    assert asyncio.run(run_demo(state, as_json=True)) == 0
    printed = json.loads(capsys.readouterr().out)
    # The dump the airlock held, named with its verdict and reasons (checks and figures), and
    # the same run's exact counts, held for review and then released by the two officers.
    (held,) = printed["held"]
    files = {f["path"]: f for f in held["files"]}
    assert held["run_id"] and {p: f["verdict"] for p, f in files.items()} == {
        "patients.csv": "block",
        "age_groups.csv": "review",
    }
    assert any(r.startswith("source-match: ") for r in files["patients.csv"]["reasons"])
    assert any(r.startswith("sdc-rounding: ") for r in files["age_groups.csv"]["reasons"])
    (released,) = printed["released"]
    assert released["run_id"] == held["run_id"] and released["files"] == ["age_groups.csv"]
    assert sorted(released["by"]) == ["officer-1", "officer-2"]
    # The demo stopped everything; the log stays in the state folder. NATS alone is enough.
    stack = Stack(state)
    stack.prepare()
    asyncio.run(stack._start_nats())
    try:
        code = main(["--state-dir", str(state), "audit", "verify"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "clean" in out and "checkpoint(s) up to seq" in out
        assert main(["--state-dir", str(state), "audit", "access", "--json"]) == 0
        # Two runs read the data: the model's, and the dump the airlock held.
        accounts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(accounts) == 2
        for account in accounts:
            assert account["status"] == "revoked" and account["tables"] == ["patients"]
        assert accounts[0]["refused"]  # the demo asks for a table that does not exist
    finally:
        asyncio.run(stack.stop())
        # The demo's signing key left a gpg-agent running for its keyring.
        gnupg = state / "demo" / "gnupg"
        subprocess.run(
            ["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"],
            capture_output=True,
            check=False,
        )
