"""@secd.cache inside the real bubblewrap sandbox, given what the executor gives a job.

The job runs as an unprivileged uid with /job read-only, its cache bound at mount_path and
SECD=PRODUCTION, SECD_CACHE_DIR and OUTPUT_PATH in its environment, as the executor sets them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import xxhash

import secd
from secd_executor.sandbox import SandboxSpec, run_sandboxed
from tests.helpers import is_root, need

JOB = """\
import secd
from helpers import scale

@secd.cache
def prepare(n):
    print("computing", flush=True)
    return [scale(i) for i in range(n)], "x" * 2_000_000  # big enough to come back mapped

rows, padding = prepare(5)
assert len(padding) == 2_000_000
(secd.output_path() / "rows.txt").write_text(str(rows))
"""


@pytest.fixture(scope="module")
def job_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run environment holding secd and xxhash, as the builder's would."""
    need(is_root(), "the sandbox launcher must run as root")
    env_dir = tmp_path_factory.mktemp("jobenv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    relative = Path(sysconfig.get_path("purelib")).relative_to(sys.prefix)
    site = env_dir / relative
    shutil.copytree(Path(secd.__file__).parent, site / "secd", ignore=_pycache)
    shutil.copytree(Path(xxhash.__file__).parent, site / "xxhash", ignore=_pycache)
    return env_dir


def _pycache(_: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "__pycache__"]


async def _run_job(root: Path, env_dir: Path, environment: dict[str, str], uid: int = 65534) -> str:
    source = root / "src"
    source.mkdir(exist_ok=True)
    (source / "main.py").write_text(JOB)
    (source / "helpers.py").write_text("def scale(i):\n    return i * 3\n")
    for folder in ("output", "cache"):
        (root / folder).mkdir(exist_ok=True)
    log = root / "job.log"
    log.unlink(missing_ok=True)
    spec = SandboxSpec(
        name=f"secd-cache-test-{root.name}",
        command=["python", "main.py"],
        source_dir=source,
        env_dir=env_dir,
        output_dir=root / "output",
        cache_dir=root / "cache",
        mount_path="/cache",
        environment=environment,
        timeout_s=60,
        uid=uid,
    )
    result = await run_sandboxed(spec, log)
    text = log.read_text()
    assert result.exit_code == 0, text
    return text


async def test_the_mounted_cache_serves_the_next_run(tmp_path: Path, job_env: Path) -> None:
    mounted = {"SECD_CACHE_DIR": "/cache"}
    assert "computing" in await _run_job(tmp_path, job_env, mounted, uid=1_700_001)
    assert (tmp_path / "output" / "rows.txt").read_text() == "[0, 3, 6, 9, 12]"
    [entry] = list((tmp_path / "cache").rglob("*.entry"))
    assert entry.stat().st_uid == 1_700_001  # written by the job's own uid, into its storage

    # Every run has a uid of its own: the next one is given the cache, and still finds it.
    second = await _run_job(tmp_path, job_env, mounted, uid=1_700_002)
    assert "computing" not in second, second
    assert entry.stat().st_uid == 1_700_002


async def test_without_a_mounted_cache_the_job_says_so(tmp_path: Path, job_env: Path) -> None:
    log = await _run_job(tmp_path, job_env, {})
    assert "computing" in log
    assert "no cache mounted" in log
    assert not list((tmp_path / "cache").rglob("*.entry"))
    assert (tmp_path / "output" / "rows.txt").exists()
