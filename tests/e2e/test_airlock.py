"""The airlock, for real (`secd up`): a job that dumps the granted table is held, its log lines
withheld, and only two security officers' approvals release it; a legitimate output passes at
once, and a file the project did not declare never leaves."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys

import asyncpg
import httpx
import pytest
from PIL import Image

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
import json, os, struct, zlib
from pathlib import Path
import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
(n,) = db.run("SELECT count(*) FROM patients")[0]
groups = db.run(
    "SELECT CASE WHEN id <= 10 THEN 'first ten' ELSE 'later' END, count(*) FROM patients"
    " GROUP BY 1 ORDER BY 1"
)
out = Path(os.environ["OUTPUT_PATH"])
(out / "metrics.json").write_text(json.dumps({"patients": int(n), "auc": 0.81}))
# An aggregate table: counts rounded to 5, none under 10.
(out / "counts.csv").write_text(
    "cohort,patients\\n" + "".join(f"{g},{5 * round(c / 5)}\\n" for g, c in groups)
)


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


# A plot (a falling line on white), written as a PNG by hand: the job needs no plotting library.
width, height = 64, 48
rows = b"".join(
    b"\\x00" + b"".join(
        b"\\x20\\x40\\xc0" if abs(y - x * height // width) <= 1 else b"\\xff\\xff\\xff"
        for x in range(width)
    )
    for y in range(height)
)
(out / "plot.png").write_bytes(
    b"\\x89PNG\\r\\n\\x1a\\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(rows))
    + chunk(b"IEND", b"")
)
(out / "scratch.txt").write_text("not declared\\n")
print("counted", flush=True)
"""

# Every way out in one job: the dump under harmless column names, transposed, base64 in a text
# file, zipped under a .png name, and printed row by row (after a pause, so that the
# researcher's `secd logs -f` follows it live).
ATTEMPTS_JOB = """\
import base64, io, os, time, zipfile
from pathlib import Path
import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
rows = db.run("SELECT id, name, personnummer, postcode FROM patients ORDER BY id")
out = Path(os.environ["OUTPUT_PATH"])


def csv(header, rows):
    return header + "\\n" + "".join(",".join(map(str, r)) + "\\n" for r in rows)


dump = csv("id,name,personnummer,postcode", rows)
(out / "renamed.csv").write_text(csv("fruit,colour,planet,river", rows))
(out / "transposed.csv").write_text(
    "".join(
        label + "," + ",".join(str(r[i]) for r in rows) + "\\n"
        for i, label in enumerate(["id", "name", "personnummer", "postcode"])
    )
)
(out / "notes.txt").write_text(
    "Notes for the next meeting.\\n" + base64.b64encode(dump.encode()).decode() + "\\n"
)
archive = io.BytesIO()
with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("cohort.csv", dump)
(out / "plot.png").write_bytes(archive.getvalue())
print("attempts written", flush=True)
time.sleep(2)
for r in rows:
    print(r, flush=True)
print("dump done", flush=True)
"""

# Rows in an exception's message: the job fails, and its traceback holds three patients.
EXCEPTION_JOB = """\
import os
import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
rows = db.run("SELECT id, name, personnummer, postcode FROM patients ORDER BY id")
print("checking the rows", flush=True)
raise ValueError(f"unexpected rows: {rows[:3]}")
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


def _patient(i: int) -> tuple[str, str, str]:
    """The name, personnummer and postcode the fixture gives patient `i`."""
    return f"{NAMES[i % 10]} {NAMES[(i * 3) % 10]}son{i}", _personnummer(i), f"{11000 + i * 137}"


def _sensitive() -> list[str]:
    """Every seeded value the researcher must never see: names (and their words), personnummer
    with and without the dash, postcodes."""
    values = set(NAMES)
    for i in range(1, 26):
        name, number, postcode = _patient(i)
        values |= {name, name.split()[1], number, number.replace("-", ""), postcode}
    return sorted(values, key=len, reverse=True)


SENSITIVE = _sensitive()


def _leaks(seen: dict[str, str]) -> list[tuple[str, str]]:
    """(where, value) for each seeded value found, as a whole word, in what the researcher sees
    (a postcode inside a commit id is no leak)."""
    return [
        (where, value)
        for where, text in seen.items()
        for value in SENSITIVE
        if re.search(rf"(?<![\w.]){re.escape(value)}(?!\w)", text)
    ]


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
            *_patient(i),
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


def _git(stack, run, *args: str, text: bool = True) -> subprocess.CompletedProcess:
    git_dir = stack.state_dir / "forge" / f"{run[0].event.project}.git"
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True,
                          text=text)  # fmt: skip


def _secd(stack, *args: str) -> str:
    """The researcher's `secd` command's output."""
    done = subprocess.run(
        [sys.executable, "-m", "secd", "--state-dir", str(stack.state_dir), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _researcher_sees(stack, run, branch: str) -> dict[str, str]:
    """Everything of a run the researcher can read, by where: each file of the results branch
    (the pushed source included), its commit messages, the commit status, `secd runs show` as
    text and JSON, and the checked job log the gateway serves (`secd logs`)."""
    run_id, head = run[0].event.run_id, run[0].event.payload.after
    seen = {}
    for name in _git(stack, run, "ls-tree", "-r", "--name-only", branch).stdout.splitlines():
        shown = _git(stack, run, "show", f"{branch}:{name}", text=False).stdout
        seen[f"{branch}:{name}"] = shown.decode("utf-8", "replace")
    seen["commit messages"] = _git(stack, run, "log", "--format=%B", branch).stdout
    seen["commit status"] = _git(stack, run, "notes", "--ref=secd", "show", head).stdout
    assert seen["commit status"].strip(), "the pushed commit has no status"
    seen["secd runs show"] = _secd(stack, "runs", "show", run_id)
    seen["secd runs show --json"] = _secd(stack, "runs", "show", run_id, "--json")
    seen["secd logs"] = _secd(stack, "logs", run_id)
    return seen


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
            audit = [s.event for s in await bus.read_run(run_id)]
            released = [
                e.payload for e in audit if e.type == "outputs.released" and not e.payload.first
            ]
            if released:
                break
            await asyncio.sleep(0.1)
    finally:
        await bus.close()
    # The audit log holds every vote (the refused ones are no votes) and every release.
    votes = [
        (e.actor, e.payload.officer, e.payload.decision, e.payload.sha256, e.payload.reason)
        for e in audit
        if e.type == "review.recorded"
    ]
    assert votes == [
        ("officer-1", "officer-1", "approve", sha, "synthetic data"),
        ("officer-2", "officer-2", "approve", sha, "agreed"),
    ]
    releases = [e.payload for e in audit if e.type == "outputs.released"]
    assert [(r.first, [f.name for f in r.files], r.by) for r in releases] == [
        (True, [], []),
        (False, ["summary.csv"], ["officer-1", "officer-2"]),
    ]
    assert releases[1].files[0].sha256 == sha
    for _ in range(100):
        shown = _git(stack, run, "show", f"{branch}:output/summary.csv")
        if shown.returncode == 0:
            break
        await asyncio.sleep(0.1)
    assert shown.stdout.startswith("id,name,personnummer,postcode\n")
    # The further commit is in the audit log too: which files, by whom, which commit.
    bus = await open_log(stack.state_dir)
    try:
        for _ in range(100):
            extended = [
                e.payload
                for e in (s.event for s in await bus.read_run(run_id))
                if e.type == "results.extended"
            ]
            if extended:
                break
            await asyncio.sleep(0.1)
    finally:
        await bus.close()
    assert [(x.branch, x.files, x.by) for x in extended] == [
        (branch, ["output/summary.csv"], ["officer-1", "officer-2"])
    ]
    assert _git(stack, run, "rev-parse", branch).stdout.strip() == extended[0].commit


async def test_legitimate_outputs_pass_at_once_and_an_undeclared_file_stays(stack, repo):
    head = repo.commit(
        _project(
            LEGIT_JOB,
            "  - {path: metrics.json, kind: metrics}\n"
            "  - {path: counts.csv, kind: counts, description: patients per cohort}\n"
            "  - {path: plot.png, kind: figure}\n",
        )
    )
    repo.push()
    run = await run_of(stack, head, "results.published")
    events = [s.event for s in run]
    checked = next(e.payload for e in events if e.type == "outputs.checked")
    assert checked.undeclared == 1
    assert sorted((f.name, f.verdict) for f in checked.files) == [
        ("counts.csv", "pass"),
        ("metrics.json", "pass"),
        ("plot.png", "pass"),
    ], [(f.name, [(c.name, c.verdict, c.evidence) for c in f.checks]) for f in checked.files]
    assert not [e for e in events if e.type == "outputs.held"]
    (released,) = [e.payload for e in events if e.type == "outputs.released"]
    assert released.first and released.by == []
    assert sorted(f.name for f in released.files) == ["counts.csv", "metrics.json", "plot.png"]
    branch = next(e.payload.branch for e in events if e.type == "results.published")
    metrics = json.loads(_git(stack, run, "show", f"{branch}:output/metrics.json").stdout)
    assert metrics == {"patients": 25, "auc": 0.81}
    counts = _git(stack, run, "show", f"{branch}:output/counts.csv").stdout
    assert counts == "cohort,patients\nfirst ten,10\nlater,15\n"
    # The plot leaves re-encoded (no metadata chunks), still the job's picture.
    png = _git(stack, run, "show", f"{branch}:output/plot.png", text=False).stdout
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.size) == ("PNG", (64, 48))
        assert image.convert("RGB").getpixel((0, 0)) == (0x20, 0x40, 0xC0)
        assert image.convert("RGB").getpixel((63, 0)) == (255, 255, 255)
    assert _git(stack, run, "show", f"{branch}:output/scratch.txt").returncode != 0
    result = _git(stack, run, "show", f"{branch}:SECD-RESULT.md").stdout
    assert "1 file(s) the job wrote are not declared" in result
    assert "Held by the airlock" not in result
    assert not _leaks(_researcher_sees(stack, run, branch))


async def test_every_disguise_of_a_dump_is_held_and_the_researcher_sees_no_row(stack, repo):
    head = repo.commit(
        _project(
            ATTEMPTS_JOB,
            "  - {path: renamed.csv, kind: table, description: fruit and colours}\n"
            "  - {path: transposed.csv, kind: table}\n"
            "  - {path: notes.txt, kind: text}\n"
            "  - {path: plot.png, kind: figure}\n",
        )
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
    assert "attempts written" in live and "dump done" in live
    assert live.count("[secd airlock: line withheld (source-match)]") == 25

    run = await run_of(stack, head, "results.published")
    events = [s.event for s in run]
    checked = next(e.payload for e in events if e.type == "outputs.checked")
    files = {f.name: f for f in checked.files}
    blocked_by = {
        name: sorted({c.name for c in f.checks if c.verdict == "block"})
        for name, f in files.items()
    }
    assert sorted(files) == ["notes.txt", "plot.png", "renamed.csv", "transposed.csv"]
    for name, file in files.items():
        assert (file.verdict, file.route) == ("block", "override"), (name, blocked_by)
    # Each for what it is: rows of the table under other names, rows inside base64, a zip.
    assert "source-match" in blocked_by["renamed.csv"]
    assert "source-match" in blocked_by["transposed.csv"]
    assert "source-match" in blocked_by["notes.txt"]
    assert "type" in blocked_by["plot.png"]
    held = next(e.payload for e in events if e.type == "outputs.held")
    assert sorted(f.name for f in held.files) == sorted(files)
    assert checked.verdict == "block" and {c.verdict for c in checked.log} != {"pass"}
    released = [e.payload for e in events if e.type == "outputs.released"]
    assert [(r.first, r.files) for r in released] == [(True, [])]

    branch = next(e.payload.branch for e in events if e.type == "results.published")
    for name in files:
        assert _git(stack, run, "show", f"{branch}:output/{name}").returncode != 0
    seen = _researcher_sees(stack, run, branch)
    log = seen[f"{branch}:secd-run.log"]
    assert "attempts written" in log and "dump done" in log
    assert log.count("[secd airlock: line withheld (source-match)]") == 25
    result = seen[f"{branch}:SECD-RESULT.md"]
    assert "Held by the airlock" in result
    for name in files:
        assert f"- {name} (block: " in result
    assert not _leaks({**seen, "secd logs -f": live})
    # Nor does the audit log hold a value: evidence names checks and figures only.
    assert not _leaks({s.event.type: s.data.decode() for s in run})


async def test_rows_in_an_exception_never_reach_the_researcher(stack, repo):
    head = repo.commit(_project(EXCEPTION_JOB, "  - {path: metrics.json, kind: metrics}\n"))
    repo.push()
    run = await run_of(stack, head, "results.published")
    events = [s.event for s in run]
    failed = next(e.payload for e in events if e.type == "run.failed")
    assert failed.reason == "the job exited with code 1"
    checked = next(e.payload for e in events if e.type == "outputs.checked")
    assert checked.files == [] and {c.verdict for c in checked.log} != {"pass"}
    branch = next(e.payload.branch for e in events if e.type == "results.published")
    seen = _researcher_sees(stack, run, branch)
    log = seen[f"{branch}:secd-run.log"]
    assert "checking the rows" in log and "Traceback (most recent call last):" in log
    assert "[secd airlock: line withheld (source-match)]" in log
    assert "unexpected rows: [" not in log
    for where in ("secd runs show", f"{branch}:SECD-RESULT.md"):
        assert "the job exited with code 1" in seen[where], where
        assert "[secd airlock: line withheld (source-match)]" in seen[where], where
    assert not _leaks(seen)
