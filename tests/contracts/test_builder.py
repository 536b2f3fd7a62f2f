"""One contract for every EnvironmentBuilder adapter: the virtualenv builder (real uv and git,
a folder artifact store), the BuildKit builder (against FakeKubernetes: no cluster runs here)
and the stub."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
import pytest

from secd_builder.buildkit import METADATA_MARKER, BuildKitBuilder
from secd_builder.port import BuildError, BuildRequest, EnvironmentBuilder
from secd_builder.stub import StubBuilder
from secd_builder.venv import VenvBuilder
from secd_shared.artifacts import FolderArtifacts
from secd_shared.config import BuildKitConfig
from secd_shared.events import RunSpec
from secd_shared.kube import Kube
from tests.fakes.kubernetes import FakeKubernetes, PodScript

pytestmark = pytest.mark.timeout(120)

BUILDKIT = "moby/buildkit:v0.20.0-rootless"
DIGEST = "sha256:" + "d" * 64
GIT_ENV = {
    "PATH": os.environ["PATH"],
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "R",
    "GIT_AUTHOR_EMAIL": "r@example.org",
    "GIT_COMMITTER_NAME": "R",
    "GIT_COMMITTER_EMAIL": "r@example.org",
}


@dataclass
class Case:
    """One adapter, and how to see what it made."""

    name: str
    builder: EnvironmentBuilder
    store: FolderArtifacts


def _bare_repo(tmp_path: Path) -> tuple[Path, str]:
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], env=GIT_ENV, check=True)
    (work / "main.py").write_text("print('hi')\n")
    subprocess.run(["git", "-C", str(work), "add", "-A"], env=GIT_ENV, check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "one"], env=GIT_ENV, check=True)
    bare = tmp_path / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], env=GIT_ENV, check=True)
    head = subprocess.run(
        ["git", "--git-dir", str(bare), "rev-parse", "HEAD"],
        env=GIT_ENV, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return bare, head


@pytest.fixture(params=["venv", "buildkit", "stub"])
async def case(request, tmp_path: Path) -> AsyncIterator[Case]:
    store = FolderArtifacts(tmp_path / "artifacts")
    if request.param == "venv":
        yield Case("venv", VenvBuilder(store, tmp_path / "envs", timeout_s=120), store)
        return
    if request.param == "stub":
        yield Case("stub", StubBuilder(), store)
        return
    fake = FakeKubernetes().start()
    log = ["#7 exporting to image", f'{METADATA_MARKER} {{"containerimage.digest": "{DIGEST}"}}']
    fake.scripts[BUILDKIT] = PodScript(log=log)
    settings = msgspec.structs.replace(
        BuildKitConfig(),
        image=BUILDKIT,
        registry="registry.example.org/secd",
        git_url="https://gitlab.example.org/{repository}.git",
        base_image="python:3.11-slim@sha256:" + "b" * 64,
        poll_s=0.02,
    )
    # The init container that fetches the commit, then BuildKit itself.
    fake.scripts[settings.git_image] = PodScript(log=["fetched"])
    builder = BuildKitBuilder(Kube.for_url(fake.url), settings)
    yield Case("buildkit", builder, store)
    await builder.close()
    fake.stop()
    assert not fake.validation_errors, fake.validation_errors


@pytest.fixture
def build_request(tmp_path: Path) -> BuildRequest:
    bare, head = _bare_repo(tmp_path)
    return BuildRequest(
        run_id="r0123456789abcdef09",
        researcher="alice",
        repository="alice/model",
        ref="refs/heads/main",
        commit=head,
        spec=RunSpec(),
        requirements=b"",
        has_dockerfile=False,
        log_path=tmp_path / "builds" / "build.log",
        git_dir=bare,
    )


async def test_the_same_request_twice_names_the_same_environment(case: Case, build_request):
    first = await case.builder.environment_for(build_request)
    again = await case.builder.environment_for(build_request)
    assert first.environment and again.environment == first.environment
    assert first.log_path is not None and first.log_path.exists()
    if case.name != "buildkit":  # BuildKit builds every time (its registry cache is the reuse)
        assert again.reused is True


async def test_what_was_built_is_named_by_digest(case: Case, build_request):
    built = await case.builder.environment_for(build_request)
    if case.name == "buildkit":
        assert built.image is not None and built.image.endswith("@" + built.environment)
        assert built.source == ""  # the image holds the code
        return
    assert built.environment.startswith("sha256:") and len(built.environment) == 71
    if case.name == "venv":
        # The environment and the source are in the store, as archives the executor unpacks.
        assert await case.store.has(built.environment)
        source = await case.store.get_bytes(built.source, max_bytes=1 << 20)
        with tarfile.open(fileobj=io.BytesIO(source)) as archive:
            assert archive.getnames() == ["main.py"]
        env = await case.store.get_bytes(built.environment, max_bytes=1 << 28)
        with tarfile.open(fileobj=io.BytesIO(env)) as archive:
            names = archive.getnames()
        assert "pyvenv.cfg" in names and "bin/python" in names


async def test_a_refused_requirement_fails_naming_its_line(case: Case, build_request):
    bad = replace(build_request, requirements=b"numpy\ngit+https://example.org/x.git\n")
    with pytest.raises(BuildError, match="line 2"):
        await case.builder.environment_for(bad)
