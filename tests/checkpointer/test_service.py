"""The checkpointer process (secd_checkpointer) against a real NATS server: it signs checkpoints
that cover the log as it grows, and a last one at SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from secd_shared.integrity import key_id, last_checkpoint, read_checkpoints, verify_log
from tests.auditruns import build_run, write_runs
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


async def test_the_checkpointer_process_checkpoints_and_signs_off_at_stop(
    audit_server, audit_admin, signing_key, tmp_path
):
    key_path, key = signing_key
    config = tmp_path / "secd.toml"
    config.write_text(
        f'state_dir = "{tmp_path}"\n[nats]\nurl = "{audit_server.url}"\n'
        f'[checkpointer]\nprivate_key_file = "{key_path}"\ninterval_s = 0.2\n'
    )
    env = {
        "PATH": os.environ["PATH"],
        "SECD_CONFIG": str(config),
        "SECD_NATS__USER": "checkpointer",
        "SECD_NATS__PASSWORD": audit_server.passwords["checkpointer"],
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "secd_checkpointer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        run = build_run(researcher="dave")
        await write_runs(audit_admin.jetstream(), [run])
        head = (await audit_admin.jetstream().stream_info("SECD")).state.last_seq

        async def covered():
            found = await last_checkpoint(audit_admin, "SECD")
            return found is not None and found[1].last_seq >= head

        await wait_until(covered, timeout=15)
        # One more event, then SIGTERM: the last checkpoint at stop covers it.
        await write_runs(audit_admin.jetstream(), [build_run(researcher="erin", rejected=True)])
        process.send_signal(signal.SIGTERM)
        stderr = (await asyncio.to_thread(process.communicate, timeout=15))[1].decode()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    _, final = await last_checkpoint(audit_admin, "SECD")
    info = await audit_admin.jetstream().stream_info("SECD")
    assert final.last_seq == info.state.last_seq
    assert '"msg": "checkpoint of SECD up to seq' in stderr
    all_checkpoints = await read_checkpoints(audit_admin, "SECD")
    report = await verify_log(
        audit_admin,
        "SECD",
        checkpoints=all_checkpoints,
        keys={key_id(key.verify_key): key.verify_key},
    )
    assert report.clean, [f.describe() for f in report.findings]
