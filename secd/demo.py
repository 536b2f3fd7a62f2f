"""`secd demo`: the whole workflow for real, on this machine, in a few seconds.

A researcher (alice) with a fresh GPG key pushes a signed project that trains a small model on a
synthetic patients table; secd verifies, builds, issues a temporary account, runs the code in a
sandbox, revokes the account and publishes the results as a branch. Then she pushes an unsigned
commit, which is refused with the commit named, and a signed one that writes the table to a CSV
file, which the airlock holds for security officers. Exit status 0 only if all three happened.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from secd.audit import open_log, wait_for_commit
from secd.stack import OFFICER_GROUPS, OFFICERS, SERVICES, Stack

__all__ = ["run_demo"]

RESEARCHER = "alice"
PROJECT = "alice/diabetes-model"

MAIN_PY = '''\
"""Train a small logistic-regression model on the patients table, without seeing it."""

import json
import math
import os
from pathlib import Path

import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"],
    password=os.environ["DB_PASS"],
    host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]),
    database=os.environ["DB_NAME"],
)
rows = db.run("SELECT age, bmi, glucose, diabetic FROM patients ORDER BY id")
print(f"read {len(rows)} patients")

# Standardise the features, then fit by gradient descent.
columns = list(zip(*[r[:3] for r in rows]))
means = [sum(c) / len(c) for c in columns]
sds = [math.sqrt(sum((x - m) ** 2 for x in c) / len(c)) for c, m in zip(columns, means)]
data = [([(x - m) / s for x, m, s in zip(r[:3], means, sds)], 1.0 if r[3] else 0.0) for r in rows]
weights, bias = [0.0, 0.0, 0.0], 0.0
for epoch in range(300):
    grad_w, grad_b = [0.0, 0.0, 0.0], 0.0
    for x, y in data:
        p = 1 / (1 + math.exp(-(sum(w * v for w, v in zip(weights, x)) + bias)))
        grad_w = [g + (p - y) * v for g, v in zip(grad_w, x)]
        grad_b += p - y
    weights = [w - 0.5 * g / len(data) for w, g in zip(weights, grad_w)]
    bias -= 0.5 * grad_b / len(data)
correct = sum(
    (1 / (1 + math.exp(-(sum(w * v for w, v in zip(weights, x)) + bias))) > 0.5) == (y == 1.0)
    for x, y in data
)
accuracy = correct / len(data)
print(f"training accuracy {accuracy:.3f}")

# Least privilege, visibly: a table outside alice's groups is refused.
try:
    db.run("SELECT count(*) FROM billing")
    billing = "readable"
except pg8000.native.DatabaseError as exc:
    billing = "refused: " + exc.args[0]["M"]
print(f"billing table: {billing}")

out = Path(os.environ["OUTPUT_PATH"])
(out / "model.json").write_text(json.dumps(
    {"features": ["age", "bmi", "glucose"], "means": means, "sds": sds,
     "weights": weights, "bias": bias}, indent=2))
(out / "metrics.json").write_text(json.dumps(
    {"patients": len(rows), "accuracy": round(accuracy, 4), "billing_table": billing}, indent=2))
'''

SECD_YML = """\
# How secd runs this project (see docs/researcher.md).
runfor: 0.05        # hours; the run is stopped after 3 minutes
gpu: false
command: ["python", "main.py"]
outputs:            # what may leave, checked by the airlock (anything else stays inside)
  - {path: model.json, kind: metrics, description: "the fitted weights, 3 features"}
  - {path: metrics.json, kind: metrics, description: "accuracy over all patients"}
"""

# A job that tries to take the table out: a CSV dump declared as a table, and printed.
DUMP_PY = """\
import os
from pathlib import Path

import pg8000.native

db = pg8000.native.Connection(
    user=os.environ["DB_USER"], password=os.environ["DB_PASS"], host=os.environ["DB_HOST"],
    port=int(os.environ["DB_PORT"]), database=os.environ["DB_NAME"],
)
rows = db.run("SELECT * FROM patients ORDER BY id")
lines = ["id,age,bmi,glucose,diabetic"] + [",".join(str(v) for v in r) for r in rows]
Path(os.environ["OUTPUT_PATH"], "patients.csv").write_text("\\n".join(lines) + "\\n")
for r in rows[:5]:
    print(r)
# The legitimate part of the run: patients per age group, exact (not rounded) counts.
groups = db.run(
    "SELECT CASE WHEN age < 40 THEN '20-39' WHEN age < 60 THEN '40-59' ELSE '60-85' END AS g,"
    " count(*) FROM patients GROUP BY g ORDER BY g"
)
Path(os.environ["OUTPUT_PATH"], "age_groups.csv").write_text(
    "age_group,patients\\n" + "".join(f"{g},{n}\\n" for g, n in groups)
)
"""

DUMP_YML = """\
runfor: 0.05
outputs:
  - {path: patients.csv, kind: table, description: "a summary table"}
  - {path: age_groups.csv, kind: counts, description: "patients per age group"}
"""


def _git(cwd: Path, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _make_key(gnupg: Path) -> str:
    gnupg.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    subprocess.run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
         f"Alice Researcher <{RESEARCHER}@example.org>", "ed25519", "sign", "never"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-secret-keys"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))


async def _seed_patients(stack: Stack) -> None:
    import asyncpg

    conn = await asyncpg.connect(**stack.postgres_admin_dsn())
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS patients, billing;"
            "CREATE TABLE patients (id serial PRIMARY KEY, age int, bmi float8, glucose float8,"
            " diabetic bool);"
            "CREATE TABLE billing (id serial PRIMARY KEY, patient int, amount numeric);"
        )
        rng = random.Random(7)  # noqa: S311 - synthetic data, not secrets
        rows = []
        for _ in range(400):
            age, bmi = rng.randint(20, 85), rng.gauss(27, 5)
            glucose = rng.gauss(95 + 0.4 * (bmi - 27) * 4 + 0.3 * (age - 50), 18)
            risk = 1 / (1 + 2.718 ** (-(0.06 * (glucose - 110) + 0.08 * (bmi - 28))))
            rows.append((age, bmi, glucose, rng.random() < risk))
        await conn.executemany(
            "INSERT INTO patients (age, bmi, glucose, diabetic) VALUES ($1, $2, $3, $4)", rows
        )
        await conn.execute("INSERT INTO billing (patient, amount) VALUES (1, 120.5)")
    finally:
        await conn.close()


async def _wait_for(stack: Stack, head: str, want: str, timeout: float = 300) -> list:
    """The events of the run for pushed commit `head`, once it has an event of type `want`."""
    bus = await open_log(stack.state_dir)
    try:
        run = await wait_for_commit(bus, head, want, timeout=timeout)
    finally:
        await bus.close()
    return [stored.event for stored in run]


def _held_files(events: list) -> list[dict]:
    """The files of a run the airlock held, as the researcher may see them: the name shown
    (a name that could carry data is withheld), the verdict, and each failed check's evidence,
    which names checks, columns and figures, never a value of the data."""
    checked = next((e.payload for e in events if e.type == "outputs.checked"), None)
    by_sha = {f.sha256: f for f in checked.files} if checked else {}
    files = []
    for item in (f for e in events if e.type == "outputs.held" for f in e.payload.files):
        found = by_sha.get(item.sha256)
        reasons = [
            f"{c.name}: {c.evidence}" if c.evidence else c.name
            for c in (found.checks if found else [])
            if c.verdict != "pass"
        ]
        verdict = found.verdict if found else item.reason.split(":", 1)[0]
        files.append({"path": item.name, "verdict": verdict, "reasons": reasons or [item.reason]})
    return files


async def _officers_release(stack: Stack, run_id: str, sha256: str, reason: str) -> list:
    """The embedded site's two officers approve one held file through the gateway's review API
    (as `secd review approve` does, each with their own token); the run's events once the
    airlock has released it."""
    import httpx

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        for officer in OFFICERS:
            token = (stack.state_dir / "secrets" / f"{officer}.token").read_text().strip()
            answer = await client.post(
                f"/reviews/{run_id}/{sha256}",
                json={"decision": "approve", "reason": reason},
                headers={"Authorization": f"Bearer {token}"},
            )
            if not answer.is_success:
                raise RuntimeError(f"{officer}'s approval was refused: {answer.text[:200]}")
    bus = await open_log(stack.state_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = [s.event for s in await bus.read_run(run_id)]
            if any(
                e.type == "outputs.released" and any(f.sha256 == sha256 for f in e.payload.files)
                for e in events
            ):
                return events
            await asyncio.sleep(0.05)
    finally:
        await bus.close()
    raise TimeoutError(f"the airlock did not release {sha256[:12]} within 60 s")


def _branch_files(bare: Path, branch: str, before: str, timeout: float = 60) -> list[str]:
    """The files of results branch `branch`, once a commit after `before` has landed there
    (the publisher adds each later release as a further commit)."""
    deadline = time.monotonic() + timeout
    while _git(bare, "rev-parse", branch) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return _git(bare, "ls-tree", "-r", "--name-only", branch).splitlines()


async def run_demo(state_dir: Path, *, as_json: bool = False) -> int:
    """Run the demo; print what happened; 0 only if a run was published, an unsigned push
    rejected, a dump held (not on its results branch) and the same run's legitimate counts
    released by two officers."""
    say = (lambda *_a, **_k: None) if as_json else print
    # Keep the builder's folder, with the environments built by earlier demos (a rebuild needs
    # the package index); start everything else afresh.
    envs = state_dir / "builder"
    if state_dir.exists():
        for child in state_dir.iterdir():
            if child != envs:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    account = getpass.getuser()
    stack = Stack(state_dir, accounts={account: RESEARCHER})
    config = stack.prepare()
    say(f"secd demo in {state_dir}")
    fingerprint = _make_key(state_dir / "demo" / "gnupg")
    gnupg = str(state_dir / "demo" / "gnupg")
    (state_dir / "keys" / RESEARCHER).mkdir(parents=True, exist_ok=True)
    (state_dir / "keys" / RESEARCHER / "alice.asc").write_bytes(
        subprocess.run(
            ["gpg", "--batch", "--armor", "--export", fingerprint],
            env={**os.environ, "GNUPGHOME": gnupg},
            check=True,
            capture_output=True,
        ).stdout
    )
    (state_dir / "groups.toml").write_text(
        "[researchers]\n"
        f'{RESEARCHER} = ["postgres-patients-read", "postgres-diagnoses-read", "staff"]\n'
        + OFFICER_GROUPS
    )
    started = time.monotonic()
    await stack.start()
    say(
        f"  started NATS, PostgreSQL and {len(SERVICES)} services "
        f"in {time.monotonic() - started:.1f} s"
    )
    result: dict = {"runs": [], "rejected": [], "held": []}
    dump_published: list[str] = []
    released_files: list[str] = []
    try:
        await _seed_patients(stack)
        from secd_shared.forge import create_repository

        forge = Path(config["state_dir"]) / "forge"
        bare = create_repository(
            forge,
            PROJECT,
            gateway_url=stack.gateway_url,
            token_file=Path(config["gateway"]["token_file"]),
        )
        work = state_dir / "demo" / "diabetes-model"
        work.mkdir(parents=True)
        env = {**os.environ, "GNUPGHOME": gnupg}
        _git(work, "init", "--quiet", "--initial-branch=main")
        for key, value in {
            "user.name": "Alice Researcher",
            "user.email": f"{RESEARCHER}@example.org",
            "user.signingkey": fingerprint,
            "commit.gpgsign": "true",
        }.items():
            _git(work, "config", key, value)
        _git(work, "remote", "add", "origin", str(bare))
        (work / "main.py").write_text(MAIN_PY)
        (work / "secd.yml").write_text(SECD_YML)
        (work / "requirements.txt").write_text("pg8000==1.31.2\n")
        _git(work, "add", ".")
        _git(work, "commit", "--quiet", "-S", "-m", "Train a diabetes risk model", env=env)
        head = _git(work, "rev-parse", "HEAD")
        say(f"\n1. alice pushes signed commit {head[:7]}")
        t0 = time.monotonic()
        _git(work, "push", "--quiet", "origin", "main", env=env)
        events = await _wait_for(stack, head, "results.published")
        from secd_shared.runs import fold_run

        view = fold_run(events[0].run_id, events)
        elapsed = time.monotonic() - t0
        # What the run added on top of the pushed source.
        files = view.files
        say(f"   {view.outcome}: results on branch {view.branch} after {elapsed:.2f} s")
        say("   stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in view.stages.items()))
        say(f"   granted: {', '.join(view.granted)}")
        for refusal in view.refused:
            say(f"   not granted: {refusal['name']} ({refusal['reason']})")
        for name in files:
            say(f"     {name}")
        if "output/metrics.json" in files:
            metrics = _git(bare, "show", f"{view.branch}:output/metrics.json")
            say(textwrap.indent(metrics, "     "))
        if view.outcome != "succeeded":
            say(f"   reason: {view.reason}\n{view.log_tail}")
        say(f"   fetch it: git fetch origin {view.branch}")
        result["runs"].append(
            {
                "run_id": view.run_id,
                "status": view.status,
                "outcome": view.outcome,
                "branch": view.branch,
                "files": files,
                "stages": {k: round(v, 3) for k, v in view.stages.items()},
            }
        )

        (work / "notes.txt").write_text("an unsigned change\n")
        _git(work, "add", "notes.txt")
        _git(work, "-c", "commit.gpgsign=false", "commit", "--quiet", "-m", "Unsigned change")
        unsigned = _git(work, "rev-parse", "HEAD")
        say(f"\n2. alice pushes unsigned commit {unsigned[:7]}")
        _git(work, "push", "--quiet", "origin", "main", env=env)
        events = await _wait_for(stack, unsigned, "run.rejected")
        rejected = fold_run(events[0].run_id, events)
        say(f"   rejected: {rejected.reason}")
        result["rejected"].append({"commit": rejected.commit, "reason": rejected.reason})

        # 3. A signed push that dumps the table: the airlock holds it for security officers.
        _git(work, "checkout", "--quiet", "-b", "dump", head)
        (work / "main.py").write_text(DUMP_PY)
        (work / "secd.yml").write_text(DUMP_YML)
        _git(work, "add", ".")
        _git(work, "commit", "--quiet", "-S", "-m", "Export the patients", env=env)
        dump = _git(work, "rev-parse", "HEAD")
        say(
            f"\n3. alice pushes signed commit {dump[:7]} that writes the table to a CSV file,"
            " and counts per age group"
        )
        _git(work, "push", "--quiet", "origin", "dump", env=env)
        events = await _wait_for(stack, dump, "results.published")
        held = _held_files(events)
        published = next(e.payload for e in events if e.type == "results.published")
        checked = next((e.payload for e in events if e.type == "outputs.checked"), None)
        withheld_lines = sum(1 for c in (checked.log if checked else []) if c.verdict != "pass")
        for item in held:
            say(f"   held for security officers: {item['path']} ({item['verdict']})")
            for reason in item["reasons"]:
                say(f"     - {reason}")
        if checked is not None:
            say(f"   job log: {withheld_lines} check(s) withheld lines; see secd-run.log")
        say(f"   on branch {published.branch}: {', '.join(published.files)}")
        if held:
            result["held"].append({"run_id": events[0].run_id, "files": held})
        dump_published = published.files
        # The counts table of that run is legitimate, and waits for review only because its
        # counts are exact: the site's two officers look at it and release it.
        counts = next(
            (f for e in events if e.type == "outputs.held" for f in e.payload.files
             if f.name == "age_groups.csv"),
            None,
        )  # fmt: skip
        if counts is not None:
            reason = "three age groups of 100+ patients each: aggregates, no one singled out"
            first_head = _git(bare, "rev-parse", published.branch)
            events = await _officers_release(stack, events[0].run_id, counts.sha256, reason)
            by = next(e.payload.by for e in events if e.type == "outputs.released" and e.payload.by)
            say(f"   officers {' and '.join(by)} approve age_groups.csv: released")
            released_files = _branch_files(bare, published.branch, first_head)
            say(f"   now on branch {published.branch}: {', '.join(released_files)}")
            result["released"] = [
                {"run_id": events[0].run_id, "files": ["age_groups.csv"], "by": by}
            ]
    finally:
        await stack.stop()
    ok = (
        len(result["runs"]) == 1
        and result["runs"][0]["status"] == "published"
        and result["runs"][0]["outcome"] == "succeeded"
        and len(result["rejected"]) == 1
        # The dump: held for officers with a reason, and not on its results branch.
        and [sorted((f["path"], f["verdict"]) for f in r["files"]) for r in result["held"]]
        == [[("age_groups.csv", "review"), ("patients.csv", "block")]]
        and all(f["reasons"] for r in result["held"] for f in r["files"])
        and "secd-run.log" in dump_published
        and "output/patients.csv" not in dump_published
        # The legitimate counts: released by both officers, onto the branch; the dump never.
        and [sorted(r["by"]) for r in result.get("released", [])] == [sorted(OFFICERS)]
        and "output/age_groups.csv" in released_files
        and "output/patients.csv" not in released_files
    )
    if as_json:
        print(json.dumps(result))
    else:
        print("\ndemo " + ("succeeded" if ok else "FAILED"))
    sys.stdout.flush()
    return 0 if ok else 1
