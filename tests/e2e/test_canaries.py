"""Canary rows, for real (`secd up`, embedded PostgreSQL, bwrap): with `[canaries] rows = 3` the
run's account reads `patients` with three synthetic patients added; a job that prints every row
has those lines withheld, live and in the published log, the canary check named with the run in
the evidence, and no canary value reaches the researcher or the audit log."""

from __future__ import annotations

import asyncio
import re
import sys

import asyncpg
import pytest

from secd_shared.canaries import canary_key, canary_rows
from tests.helpers import is_root, requires

from .conftest import run_of, start_stack
from .test_airlock import _git, _researcher_sees

pytestmark = [
    pytest.mark.timeout(300),
    requires(is_root(), "the bubblewrap sandbox needs root to start"),
]

CANARIES = 3
PATIENTS = 25  # start_stack's patients table

JOB = """\
import os
from pathlib import Path
import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
rows = db.run("SELECT id, name FROM patients ORDER BY id")
print(f"read {len(rows)} rows", flush=True)
for r in rows:
    print(r, flush=True)
Path(os.environ["OUTPUT_PATH"], "rows.txt").write_text("".join(f"{r}\\n" for r in rows))
print("dump done", flush=True)
"""


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, keys):
    stack = await start_stack(
        tmp_path_factory.mktemp("canaries"), keys, extra_config={"canaries": {"rows": CANARIES}}
    )
    conn = await asyncpg.connect(**stack.postgres_admin_dsn())
    await conn.execute(
        "ALTER TABLE patients ADD COLUMN name text; UPDATE patients SET name = 'Person ' || id;"
    )
    await conn.close()
    yield stack
    await stack.stop()


def _canary_values(stack, run_id: str) -> list[str]:
    """The run's canaries' telling values, made as both services make them."""
    key = canary_key((stack.state_dir / "secrets" / "canary.key").read_bytes().strip())
    values = []
    for row in canary_rows(key, run_id, CANARIES):
        values += [str(row.patient_id), row.name, row.personnummer]
    return values


def _found(values: list[str], seen: dict[str, str]) -> list[tuple[str, str]]:
    return [
        (where, value)
        for where, text in seen.items()
        for value in values
        if re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text)
    ]


async def test_printed_canaries_are_withheld_and_the_run_named(stack, repo):
    head = repo.commit(
        {
            "main.py": JOB,
            "requirements.txt": "pg8000==1.31.2\n",
            "secd.yml": "runfor: 0.05\noutputs:\n  - {path: rows.txt, kind: text}\n",
        }
    )
    repo.push()
    started = await run_of(stack, head, "run.started")
    run_id = started[0].event.run_id
    # The researcher follows the job's output while it runs, as `secd logs -f` does.
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "secd", "--state-dir", str(stack.state_dir), "logs", run_id, "-f",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    live, _ = await asyncio.wait_for(follower.communicate(), timeout=120)
    assert follower.returncode == 0
    live = live.decode()
    # The job read the table and the canaries: 25 + 3 rows.
    assert f"read {PATIENTS + CANARIES} rows" in live and "dump done" in live
    assert live.count("[secd airlock: line withheld (canary)]") == CANARIES

    run = await run_of(stack, head, "results.published")
    events = [s.event for s in run]
    checked = next(e.payload for e in events if e.type == "outputs.checked")
    [canary] = [c for c in checked.log if c.name == "canary"]
    assert canary.verdict == "block" and run_id in canary.evidence
    [rows_file] = checked.files
    assert rows_file.verdict == "block"
    assert any(c.name == "canary" and run_id in c.evidence for c in rows_file.checks)

    branch = next(e.payload.branch for e in events if e.type == "results.published")
    assert _git(stack, run, "show", f"{branch}:output/rows.txt").returncode != 0
    seen = _researcher_sees(stack, run, branch)
    log = seen[f"{branch}:secd-run.log"]
    assert log.count("[secd airlock: line withheld (canary)]") == CANARIES
    values = _canary_values(stack, run_id)
    assert not _found(values, {**seen, "secd logs -f": live})
    # Nor does any event hold one (evidence names the check, the run and a count).
    assert not _found(values, {s.event.type: s.data.decode() for s in run})

    # The run's account and its per-run schemas are gone once the run has ended.
    await run_of(stack, head, "credentials.revoked")
    issued = next(e.payload for e in events if e.type == "credentials.issued")
    conn = await asyncpg.connect(**stack.postgres_admin_dsn())
    try:
        left = await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE $1"
            " UNION ALL SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            issued.account + "%",
        )
    finally:
        await conn.close()
    assert left == []
