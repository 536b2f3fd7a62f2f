"""The airlock, for real (`secd up`): a job that dumps the granted table is held, its log lines
withheld, and only two security officers' approvals release it; a legitimate output passes at
once, and a file the project did not declare never leaves."""

from __future__ import annotations

import asyncio
import json
import subprocess

import asyncpg
import httpx
import pytest

from secd.audit import open_log
from tests.helpers import is_root, requires

from .conftest import run_of, start_stack

pytestmark = [
    pytest.mark.timeout(300),
    requires(is_root(), "the bubblewrap sandbox needs root to start"),
]

DUMP_JOB = """\
import os
from pathlib import Path
import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
rows = db.run("SELECT id, name, personnummer, postcode FROM patients ORDER BY id")
Path(os.environ["OUTPUT_PATH"], "summary.csv").write_text(
    "id,name,personnummer,postcode\\n" + "".join(",".join(map(str, r)) + "\\n" for r in rows)
)
for r in rows[:8]:
    print(r, flush=True)
print("dump done", flush=True)
"""

LEGIT_JOB = """\
import json, os
from pathlib import Path
import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
(n,) = db.run("SELECT count(*) FROM patients")[0]
out = Path(os.environ["OUTPUT_PATH"])
(out / "metrics.json").write_text(json.dumps({"patients": int(n), "auc": 0.81}))
(out / "scratch.txt").write_text("not declared\\n")
print("counted", flush=True)
"""

NAMES = ["Astrid", "Birger", "Cecilia", "Dag", "Elsa", "Folke", "Greta", "Hugo", "Ingrid", "Jon"]


def _personnummer(i: int) -> str:
    """A valid-checksum (Luhn) Swedish personal number for a made-up 1970s birth date."""
    digits = f"7{i % 10}0{1 + i % 9}{10 + i % 18:02d}{100 + i:03d}"[:9]
    total = 0
    for n, d in enumerate(digits):
        v = int(d) * (2 if n % 2 == 0 else 1)
        total += v - 9 if v > 9 else v
    return digits[:6] + "-" + digits[6:] + str((10 - total % 10) % 10)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, keys):
    stack = await start_stack(tmp_path_factory.mktemp("airlock"), keys)
    conn = await asyncpg.connect(**stack.postgres_admin_dsn())
    await conn.execute(
        "ALTER TABLE patients ADD COLUMN name text, ADD COLUMN personnummer text,"
        " ADD COLUMN postcode text"
    )
    for i in range(1, 26):
        await conn.execute(
            "UPDATE patients SET name = $1, personnummer = $2, postcode = $3 WHERE id = $4",
            f"{NAMES[i % 10]} {NAMES[(i * 3) % 10]}son{i}",
            _personnummer(i),
            f"{11000 + i * 137}",
            i,
        )
    await conn.close()
    yield stack
    await stack.stop()


def _project(job: str, outputs: str) -> dict[str, str]:
    return {
        "main.py": job,
        "requirements.txt": "pg8000==1.31.2\n",
        "secd.yml": f"runfor: 0.05\noutputs:\n{outputs}",
    }


def _git(stack, run, *args: str) -> subprocess.CompletedProcess:
    git_dir = stack.state_dir / "forge" / f"{run[0].event.project}.git"
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True,
                          text=True)  # fmt: skip


def _officer(stack, name: str) -> httpx.AsyncClient:
    token = (stack.state_dir / "secrets" / f"{name}.token").read_text().strip()
    return httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


async def test_a_dump_is_held_and_only_two_officers_release_it(stack, repo):
    head = repo.commit(
        _project(DUMP_JOB, "  - {path: summary.csv, kind: table, description: per-patient}\n")
    )
    repo.push()
    run = await run_of(stack, head, "results.published")
    events = [s.event for s in run]
    held = next(e.payload for e in events if e.type == "outputs.held")
    checked = next(e.payload for e in events if e.type == "outputs.checked")
    assert [f.name for f in held.files] == ["summary.csv"]
    (summary,) = checked.files
    assert summary.verdict == "block" and summary.route == "override"
    assert any(c.name == "source-match" and c.verdict == "block" for c in summary.checks)
    branch = next(e.payload.branch for e in events if e.type == "results.published")
    # Nothing of the dump on the branch: not the file, not the printed rows.
    assert _git(stack, run, "show", f"{branch}:output/summary.csv").returncode != 0
    log = _git(stack, run, "show", f"{branch}:secd-run.log").stdout
    assert "dump done" in log and "[secd airlock: line withheld" in log
    assert "Astrid" not in log and "son1" not in log
    result = _git(stack, run, "show", f"{branch}:SECD-RESULT.md").stdout
    assert "Held by the airlock" in result and "summary.csv" in result
    # No check's evidence, in the audit log, holds a value of the table.
    every_event = json.dumps([c.evidence for f in checked.files for c in f.checks])
    assert "son1" not in every_event and _personnummer(1) not in every_event

    run_id = events[0].run_id
    sha = summary.sha256
    async with _officer(stack, "officer-1") as one, _officer(stack, "officer-2") as two:
        assert (
            await httpx.AsyncClient(base_url=stack.gateway_url).get("/reviews")
        ).status_code == 401
        listing = (await one.get("/reviews")).json()
        assert run_id in [r["run_id"] for r in listing["runs"]]
        shown = (await one.get(f"/reviews/{run_id}")).json()
        assert shown["files"][0]["state"] == "held"
        # Overriding a block needs a reason.
        no_reason = await one.post(f"/reviews/{run_id}/{sha}", json={"decision": "approve"})
        assert no_reason.status_code == 422
        first = await one.post(
            f"/reviews/{run_id}/{sha}", json={"decision": "approve", "reason": "synthetic data"}
        )
        assert first.status_code == 202
        again = await one.post(
            f"/reviews/{run_id}/{sha}", json={"decision": "approve", "reason": "twice"}
        )
        assert again.status_code == 409  # one vote per officer
        # One approval releases nothing.
        await asyncio.sleep(1.0)
        assert _git(stack, run, "show", f"{branch}:output/summary.csv").returncode != 0
        second = await two.post(
            f"/reviews/{run_id}/{sha}", json={"decision": "approve", "reason": "agreed"}
        )
        assert second.status_code == 202

    bus = await open_log(stack.state_dir)
    try:
        for _ in range(200):
            released = [
                s.event.payload for s in await bus.read_run(run_id)
                if s.event.type == "outputs.released" and not s.event.payload.first
            ]  # fmt: skip
            if released:
                break
            await asyncio.sleep(0.1)
    finally:
        await bus.close()
    assert released and released[0].by == ["officer-1", "officer-2"]
    for _ in range(100):
        shown = _git(stack, run, "show", f"{branch}:output/summary.csv")
        if shown.returncode == 0:
            break
        await asyncio.sleep(0.1)
    assert shown.stdout.startswith("id,name,personnummer,postcode\n")


async def test_a_legitimate_output_passes_and_an_undeclared_file_stays(stack, repo):
    head = repo.commit(_project(LEGIT_JOB, "  - {path: metrics.json, kind: metrics}\n"))
    repo.push()
    run = await run_of(stack, head, "results.published")
    events = [s.event for s in run]
    checked = next(e.payload for e in events if e.type == "outputs.checked")
    assert checked.undeclared == 1
    assert [(f.name, f.verdict) for f in checked.files] == [("metrics.json", "pass")]
    assert not [e for e in events if e.type == "outputs.held"]
    branch = next(e.payload.branch for e in events if e.type == "results.published")
    metrics = json.loads(_git(stack, run, "show", f"{branch}:output/metrics.json").stdout)
    assert metrics == {"patients": 25, "auc": 0.81}
    assert _git(stack, run, "show", f"{branch}:output/scratch.txt").returncode != 0
    result = _git(stack, run, "show", f"{branch}:SECD-RESULT.md").stdout
    assert "1 file(s) the job wrote are not declared" in result
