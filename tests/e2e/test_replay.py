"""Neighbour replay, for real (`secd up`, embedded PostgreSQL, bwrap): a project that asks for
it runs twice, the second time without a few random rows of each table; a file that writes one
patient's age in an encoding no check decodes is held (neighbour-replay), a rounded count passes.

The site hides 3 rows of each table. `patients` has exactly 3 rows, so the replay sees none of
them and the lowest-id patient is certainly left out (with more rows, a dump of one patient is
caught with chance 3/N: see docs/researcher.md); `visits` has 2000, so a count rounded to 100
comes out the same.
"""

from __future__ import annotations

import asyncpg
import pytest

from secd.stack import OFFICER_GROUPS
from tests.helpers import is_root, requires

from .conftest import run_of, start_stack

pytestmark = [
    pytest.mark.timeout(300),
    requires(is_root(), "the bubblewrap sandbox needs root to start"),
]

JOB = """\
import os
from pathlib import Path
import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
out = Path(os.environ["OUTPUT_PATH"])
first = db.run("SELECT age FROM patients ORDER BY id LIMIT 1")
# The first patient's age XOR 0x5a, as hex: something no check decodes.
code = format(first[0][0] ^ 0x5A, "02x") if first else "none"
(out / "notes.txt").write_text(f"run checksum {code}, seed {os.environ['SECD_SEED']}\\n")
(n,) = db.run("SELECT count(*) FROM visits")[0]
(out / "counts.csv").write_text(f"cohort,visits\\nall,{100 * round(n / 100)}\\n")
print("written", flush=True)
"""


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, keys):
    stack = await start_stack(
        tmp_path_factory.mktemp("replay"),
        keys,
        extra_config={"airlock": {"neighbour_replay_rows": 3}},
    )
    conn = await asyncpg.connect(**stack.postgres_admin_dsn())
    await conn.execute(
        "DELETE FROM patients WHERE id > 3; ALTER TABLE patients ADD COLUMN age int;"
        "UPDATE patients SET age = 60 + id;"
        "CREATE TABLE visits (id int PRIMARY KEY, ward text);"
        "INSERT INTO visits SELECT i, 'w' || (i % 7) FROM generate_series(1, 2000) AS i;"
    )
    await conn.close()
    (stack.state_dir / "groups.toml").write_text(
        '[researchers]\nalice = ["postgres-patients-read", "postgres-visits-read"]\n'
        + OFFICER_GROUPS
    )
    yield stack
    await stack.stop()


async def test_an_encoded_age_is_held_and_a_rounded_count_released(stack, repo):
    head = repo.commit(
        {
            "main.py": JOB,
            "requirements.txt": "pg8000==1.31.2\n",
            "secd.yml": "runfor: 0.05\nreplay: true\noutputs:\n"
            "  - {path: notes.txt, kind: text}\n"
            "  - {path: counts.csv, kind: counts}\n",
        }
    )
    repo.push()
    run = await run_of(stack, head, "results.published", timeout=240)
    events = {s.event.type: s.event for s in run}
    issued = events["credentials.issued"].payload
    assert issued.replay_account == issued.account + "_n"
    finished = events["run.finished"].payload
    assert finished.replay_outputs and finished.replay_log
    assert finished.replay_outputs != finished.outputs

    checked = {f.sha256: f for f in events["outputs.checked"].payload.files}
    held = events["outputs.held"].payload.files
    assert [f.name for f in held] == ["notes.txt"]
    notes = checked[held[0].sha256]
    replay = next(c for c in notes.checks if c.name == "neighbour-replay")
    assert replay.verdict == "review" and "differ from the replay run" in replay.evidence
    assert "line 1" in replay.evidence
    assert "neighbour-replay" in held[0].reason
    released = events["outputs.released"].payload.files
    assert [f.name for f in released] == ["counts.csv"]
    counts = checked[released[0].sha256]
    assert [c.verdict for c in counts.checks if c.name == "neighbour-replay"] == ["pass"]

    # Both accounts and the replay's schemas are gone once the run has ended.
    await run_of(stack, head, "credentials.revoked")
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
