"""One contract for every ExecutorAPI adapter: the stub, the bubblewrap sandbox (real bwrap) and
the Kubernetes Job runtime (against FakeKubernetes: no API server runs here).

A job is described once (`Job`: lines it prints, files it writes, how it ends, how long it takes)
and each adapter's case turns it into what that runtime runs: a scripted stub, a main.py in a
real sandbox, a PodScript in the fake cluster. Every test then holds for all three.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from secd_executor.bwrap import BwrapRuntime
from secd_executor.cgroups import detect_cgroups
from secd_executor.runtime import ExecutorAPI, RunRequest
from secd_executor.stub import StubJob, StubRuntime
from secd_executor.uids import UidPool
from secd_shared.artifacts import FolderArtifacts, digest_bytes
from secd_shared.tarballs import write_folder
from tests.executor.kubernetes.conftest import COLLECTOR_IMAGE, RUN_IMAGE, run_request, settings
from tests.fakes.kubernetes import FakeKubernetes, PodScript
from tests.helpers import is_root, need

pytestmark = pytest.mark.timeout(90)

RUN = "r0123456789abcdef01"


@dataclass(frozen=True)
class Job:
    """What a job does, whatever runs it."""

    log: tuple[str, ...] = ("starting", "done")
    files: dict[str, bytes] = field(default_factory=lambda: {"result.txt": b"42\n"})
    exit_code: int = 0
    runs_s: float = 0.1


@dataclass
class Case:
    """One adapter, and how to make a request whose job does `job`."""

    name: str
    runtime: ExecutorAPI
    root: Path
    fake: FakeKubernetes | None = None
    env: Path | None = None
    store: FolderArtifacts | None = None

    def request(self, job: Job, run_id: str = RUN, **overrides) -> RunRequest:
        base = run_request(self.root, run_id)
        if self.name == "stub":
            assert isinstance(self.runtime, StubRuntime)
            self.runtime.jobs[run_id] = StubJob(
                log=job.log, files=job.files, exit_code=job.exit_code, runs_s=job.runs_s,
                times_out=overrides.get("runfor_h", 1.0) * 3600 < job.runs_s,
            )  # fmt: skip
        elif self.name == "kubernetes":
            assert self.fake is not None
            # One image per run, so each run's pod plays its own script.
            image = RUN_IMAGE.replace("a" * 19, run_id)
            base = replace(base, image=image)
            self.fake.scripts[image] = PodScript(
                log=list(job.log),
                files={f"/output/{name}": data for name, data in job.files.items()},
                exit_code=job.exit_code,
                runs_s=job.runs_s,
            )
        else:
            base = self._bwrap_request(base, job, run_id)
        return replace(base, **overrides)

    def _bwrap_request(self, base: RunRequest, job: Job, run_id: str) -> RunRequest:
        # What the builder would have stored: the environment and the source, as archives.
        source = self.root / "work" / run_id / "src"
        source.mkdir(parents=True, exist_ok=True)
        code = f"""
            import os, sys, time
            for line in {list(job.log)!r}:
                print(line, flush=True)
            time.sleep({job.runs_s!r})
            for name, data in {job.files!r}.items():
                open(os.path.join(os.environ["OUTPUT_PATH"], name), "wb").write(data)
            sys.exit({job.exit_code})
        """
        (source / "main.py").write_text(textwrap.dedent(code))
        assert self.env is not None and self.store is not None
        run_dir = self.root / "runs" / run_id
        return replace(
            base,
            command=["python", "main.py"],
            image=None,
            db_host="127.0.0.1",
            db_port=5432,
            cache_dir=None,
            source=_stored_folder(self.store, source),
            environment=_stored_folder(self.store, self.env),
            output_dir=run_dir / "output",
            log_path=run_dir / "job.log",
        )


def _stored_folder(store: FolderArtifacts, folder: Path) -> str:
    """A folder as the builder stores it: one reproducible tar, by digest."""
    archive = io.BytesIO()
    write_folder(folder, archive)
    digest = digest_bytes(archive.getvalue())
    # Stored synchronously: requests are made outside the event loop's coroutines.
    store._put_data(digest, archive.getvalue())
    return digest


@pytest.fixture(scope="module")
def run_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare virtualenv standing in for an environment the builder made."""
    env = tmp_path_factory.mktemp("envs") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    return env


@pytest.fixture(params=["stub", "bwrap", "kubernetes"])
async def case(request, tmp_path: Path, run_env: Path, admin_bus) -> Iterator[Case]:
    if request.param == "stub":
        yield Case("stub", StubRuntime(), tmp_path)
        return
    if request.param == "bwrap":
        need(is_root(), "the sandbox launcher must run as root")
        store = FolderArtifacts(tmp_path / "artifacts")
        runtime = BwrapRuntime(
            admin_bus,
            store,
            runs_dir=tmp_path / "runs",
            cache_root=tmp_path / "cache",
            envs_dir=tmp_path / "envs",
            uids=UidPool(1_800_000, 64, tmp_path / "runs" / ".uids"),
            cgroups=detect_cgroups("auto", "secd"),
        )
        yield Case("bwrap", runtime, tmp_path, env=run_env, store=store)
        await runtime.close()
        return
    from secd_executor.kubernetes import KubernetesExecutor
    from secd_shared.kube import Kube

    fake = FakeKubernetes().start()
    fake.scripts[COLLECTOR_IMAGE] = PodScript(runs_s=None)
    runtime = KubernetesExecutor(Kube.for_url(fake.url), settings())
    yield Case("kubernetes", runtime, tmp_path, fake)
    await runtime.close()
    fake.stop()
    assert not fake.validation_errors, fake.validation_errors


async def test_a_job_runs_once_and_its_log_and_outputs_come_back(case: Case) -> None:
    request = case.request(Job())
    request.output_dir.mkdir(parents=True, exist_ok=True)
    starts = []

    async def started() -> None:
        starts.append(1)

    await case.runtime.prepare(request)
    await case.runtime.prepare(request)  # twice: the second finds what the first made
    outcome = await case.runtime.execute(request, started)
    assert (outcome.exit_code, outcome.reason, outcome.timed_out) == (0, None, False)
    assert outcome.started is True
    assert starts == [1]
    assert request.log_path.read_text().splitlines()[-2:] == ["starting", "done"]
    assert await case.runtime.collect(request) == []
    assert await case.runtime.collect(request) == []  # twice: the same files again
    assert (request.output_dir / "result.txt").read_bytes() == b"42\n"
    # A second execute (a redelivery) does not run the job again: it returns its outcome.
    again = await case.runtime.execute(request, started)
    assert again.exit_code == 0
    await case.runtime.cleanup(request)
    await case.runtime.cleanup(request)  # twice: nothing left to remove is not an error


async def test_the_job_s_exit_code_passes_through(case: Case) -> None:
    request = case.request(Job(exit_code=3, files={}))
    request.output_dir.mkdir(parents=True, exist_ok=True)

    async def started() -> None:
        return None

    await case.runtime.prepare(request)
    try:
        outcome = await case.runtime.execute(request, started)
        assert outcome.exit_code == 3 and outcome.reason is None and not outcome.timed_out
    finally:
        await case.runtime.cleanup(request)


async def test_a_job_past_runfor_is_stopped_and_says_so(case: Case) -> None:
    request = case.request(Job(runs_s=30.0, files={}), runfor_h=1 / 3600)
    request.output_dir.mkdir(parents=True, exist_ok=True)

    async def started() -> None:
        return None

    await case.runtime.prepare(request)
    try:
        outcome = await case.runtime.execute(request, started)
        assert outcome.timed_out is True
        assert outcome.duration_s < 30
    finally:
        await case.runtime.cleanup(request)


async def test_two_runs_are_kept_apart(case: Case) -> None:
    first = case.request(Job(files={"a.txt": b"first"}), run_id="r0123456789abcdef0a")
    second = case.request(Job(files={"b.txt": b"second"}), run_id="r0123456789abcdef0b")

    async def started() -> None:
        return None

    for request in (first, second):
        request.output_dir.mkdir(parents=True, exist_ok=True)
        await case.runtime.prepare(request)
    try:
        for request in (first, second):
            assert (await case.runtime.execute(request, started)).exit_code == 0
            await case.runtime.collect(request)
        assert sorted(p.name for p in first.output_dir.iterdir()) == ["a.txt"]
        assert sorted(p.name for p in second.output_dir.iterdir()) == ["b.txt"]
    finally:
        for request in (first, second):
            await case.runtime.cleanup(request)
