"""The BuildKit builder: its generated Dockerfile, its Job (schema-valid, offline), its scripts run
for real with git and sh, and its whole flow against FakeKubernetes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import msgspec
import pytest

from secd_builder.buildkit import (
    BUILD_SCRIPT,
    FETCH_SCRIPT,
    METADATA_MARKER,
    BuildKitBuilder,
    BuildRequest,
    _digest_from,
    generate_dockerfile,
)
from secd_builder.environment import BuildError
from secd_shared.config import BuilderConfig, BuildKitConfig, Config, ForgeConfig
from secd_shared.events import Producer, PushVerified, RunSpec, new_event
from secd_shared.kube import Kube, dns_name
from tests.fakes.kubernetes import FakeKubernetes, PodScript

pytestmark = pytest.mark.timeout(60)

BUILDKIT = "moby/buildkit:v0.20.0-rootless"
GIT_IMAGE = "alpine/git:v2.47.2"
REGISTRY = "registry.example.org/secd"
DIGEST = "sha256:" + "d" * 64
COMMIT = "c" * 40
RUN = "r0123456789abcdef09"
GIT_ENV = {
    "PATH": os.environ["PATH"],
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "R",
    "GIT_AUTHOR_EMAIL": "r@example.org",
    "GIT_COMMITTER_NAME": "R",
    "GIT_COMMITTER_EMAIL": "r@example.org",
}


def settings(**overrides: object) -> BuildKitConfig:
    base = BuildKitConfig(
        image=BUILDKIT,
        git_image=GIT_IMAGE,
        registry=REGISTRY,
        git_url="https://gitlab.example.org/{repository}.git",
        git_token_secret="secd-git-token",
        registry_secret="secd-registry",
        base_image="python:3.11-slim@sha256:" + "b" * 64,
        poll_s=0.02,
    )
    return msgspec.structs.replace(base, **overrides) if overrides else base


def request(tmp_path: Path, **overrides) -> BuildRequest:
    base = BuildRequest(
        run_id=RUN,
        researcher="alice@example.org",
        repository="alice/diabetes-model",
        ref="refs/heads/main",
        commit=COMMIT,
        spec=RunSpec(command=["python", "train.py", "--epochs", "3"]),
        requirements=b"numpy==2.1.0\npandas>=2\n",
        has_dockerfile=False,
        log_path=tmp_path / "build.log",
    )
    from dataclasses import replace

    return replace(base, **overrides) if overrides else base


def test_a_generated_dockerfile_installs_checked_requirements_then_copies_code() -> None:
    text = generate_dockerfile(
        RunSpec(command=["python", "train.py"]),
        b"numpy==2.1.0\n",
        base_image="python:3.11-slim",
        index_url="https://pypi.example.org/simple",
    )
    lines = text.splitlines()
    assert lines[1] == "FROM python:3.11-slim"
    install = lines.index(
        'RUN ["python", "-m", "pip", "install", "--no-cache-dir", "--only-binary=:all:", '
        '"--index-url", "https://pypi.example.org/simple", "-r", "/tmp/requirements.txt"]'
    )
    assert lines.index("COPY requirements.txt /tmp/requirements.txt") < install
    assert install < lines.index("COPY . /job")
    assert "USER 65534:65534" in lines
    assert lines[-1] == 'CMD ["python", "train.py"]'
    # No requirements: no install step (and no COPY of a file that may not exist).
    bare = generate_dockerfile(RunSpec(), b"# nothing\n", base_image="python:3.11-slim")
    assert "pip" not in bare and "requirements.txt" not in bare
    with pytest.raises(BuildError, match="index"):
        generate_dockerfile(
            RunSpec(), b"--extra-index-url https://evil.example\nx\n", base_image="p"
        )


def test_the_build_job_validates_and_confines_buildkit(tmp_path: Path) -> None:
    builder = BuildKitBuilder(Kube(api_client=None), settings())
    job = builder.job_manifest(request(tmp_path), generated=True)
    assert kubernetes_validate.validate(job, "1.37", strict=True) == "1.37"
    owner = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "uid": "u"}}
    config_map = builder.dockerfile_manifest(request(tmp_path), "FROM x\n", owner)
    assert kubernetes_validate.validate(config_map, "1.37", strict=True) == "1.37"
    spec = job["spec"]
    assert spec["suspend"] is True and spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 900
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (fetch,) = pod["initContainers"]
    assert fetch["image"] == GIT_IMAGE
    assert fetch["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["value"] for e in fetch["env"]}
    assert env["GIT_URL"] == "https://gitlab.example.org/alice/diabetes-model.git"
    assert env["GIT_COMMIT"] == COMMIT
    (build,) = pod["containers"]
    assert build["image"] == BUILDKIT
    assert build["command"][:2] == ["/bin/sh", "-c"]
    assert build["securityContext"]["runAsUser"] == 1000
    assert build["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    args = build["args"]
    cache = f"{REGISTRY}/cache/{dns_name('alice@example.org')}"
    assert args[args.index("--export-cache") + 1] == f"type=registry,ref={cache},mode=max"
    assert args[args.index("--import-cache") + 1] == f"type=registry,ref={cache}"
    image = f"{REGISTRY}/runs/{dns_name('alice@example.org')}:{RUN}"
    assert args[args.index("--output") + 1] == f"type=image,name={image},push=true"
    assert "dockerfile=/secd/dockerfile" in args
    own = builder.job_manifest(request(tmp_path, has_dockerfile=True), generated=False)
    assert "dockerfile=/workspace/src" in own["spec"]["template"]["spec"]["containers"][0]["args"]
    with pytest.raises(BuildError, match="not a full commit id"):
        builder.job_manifest(request(tmp_path, commit="main; rm -rf /"), generated=True)


def _repo(tmp_path: Path) -> tuple[Path, str, str]:
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], env=GIT_ENV, check=True)
    (work / "main.py").write_text("print('hi')\n")
    subprocess.run(["git", "-C", str(work), "add", "-A"], env=GIT_ENV, check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "one"], env=GIT_ENV, check=True)
    first = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], env=GIT_ENV, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["git", "-C", str(work), "checkout", "-qb", "other"], env=GIT_ENV, check=True)
    (work / "evil.py").write_text("x\n")
    subprocess.run(["git", "-C", str(work), "add", "-A"], env=GIT_ENV, check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "two"], env=GIT_ENV, check=True)
    other = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], env=GIT_ENV, capture_output=True, text=True
    ).stdout.strip()
    return work, first, other


def test_the_fetch_script_checks_out_exactly_the_verified_commit(tmp_path: Path) -> None:
    work, first, other = _repo(tmp_path)

    def fetch(commit: str, workspace: Path) -> subprocess.CompletedProcess:
        workspace.mkdir()
        env = GIT_ENV | {
            "GIT_URL": f"file://{work}",
            "GIT_REF": "refs/heads/main",
            "GIT_COMMIT": commit,
            "WORKSPACE": str(workspace),
            "TOKEN_FILE": str(tmp_path / "no-token"),
        }
        return subprocess.run(["sh", "-c", FETCH_SCRIPT], env=env, capture_output=True, text=True)

    done = fetch(first, tmp_path / "ws1")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "ws1" / "src")) == ["main.py"]  # no .git left
    # A commit that is not on the pushed ref is not built, even if the forge has it.
    refused = fetch(other, tmp_path / "ws2")
    assert refused.returncode != 0


def test_the_build_script_reports_the_pushed_digest(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    metadata = tmp_path / "metadata.json"
    fake_buildctl = bin_dir / "buildctl-daemonless.sh"
    fake_buildctl.write_text(
        '#!/bin/sh\necho "#1 building $*"\n'
        f'printf \'{{\\n  "containerimage.digest": "{DIGEST}"\\n}}\\n\' > "$SECD_METADATA"\n'
    )
    fake_buildctl.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SECD_METADATA": str(metadata)}
    done = subprocess.run(
        ["sh", "-c", BUILD_SCRIPT, "secd-build", "build", "--frontend", "dockerfile.v0"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    log = tmp_path / "build.log"
    log.write_text(done.stdout)
    assert "#1 building build --frontend dockerfile.v0" in done.stdout
    assert _digest_from(log) == DIGEST


@pytest.fixture
def fake_k8s():
    fake = FakeKubernetes().start()
    fake.scripts[GIT_IMAGE] = PodScript(log=["fetched"])
    yield fake
    fake.stop()
    assert not fake.validation_errors, fake.validation_errors


def _built_log(digest: str = DIGEST) -> list[str]:
    return [
        "#5 [2/4] RUN pip install",
        "#7 exporting to image",
        f'{METADATA_MARKER} {{"containerimage.digest": "{digest}"}}',
    ]


def test_a_build_runs_as_a_released_job_and_yields_the_image_by_digest(
    tmp_path: Path, fake_k8s: FakeKubernetes
) -> None:
    fake_k8s.scripts[BUILDKIT] = PodScript(log=_built_log())
    builder = BuildKitBuilder(Kube.for_url(fake_k8s.url), settings())
    built = builder.build(request(tmp_path))
    assert built.image == f"{REGISTRY}/runs/{dns_name('alice@example.org')}@{DIGEST}"
    assert built.digest == DIGEST
    assert "fetched" in built.log_path.read_text()
    assert "#7 exporting to image" in built.log_path.read_text()
    order = [(v, k, d) for v, k, _, d in fake_k8s.events if v in ("create", "patch", "delete")]
    assert order[0] == ("create", "Job", "true")
    assert order[1][:2] == ("create", "ConfigMap")
    assert order[2] == ("patch", "Job", '{"spec": {"suspend": false}}')
    assert fake_k8s.of_kind("Job") == [] and fake_k8s.of_kind("ConfigMap") == []
    # A second call (a redelivery after the build) builds again cleanly.
    assert builder.build(request(tmp_path)).digest == DIGEST


def test_a_failed_build_reports_the_exit_and_the_log_tail(
    tmp_path: Path, fake_k8s: FakeKubernetes
) -> None:
    fake_k8s.scripts[BUILDKIT] = PodScript(
        log=["ERROR: No matching distribution found for nump"], exit_code=1
    )
    builder = BuildKitBuilder(Kube.for_url(fake_k8s.url), settings())
    with pytest.raises(BuildError, match="BuildKit exited with code 1") as caught:
        builder.build(request(tmp_path))
    assert "No matching distribution" in caught.value.log_tail
    assert fake_k8s.of_kind("Job") == []


def test_a_fetch_that_fails_and_an_unpullable_buildkit_fail_fast(
    tmp_path: Path, fake_k8s: FakeKubernetes
) -> None:
    fake_k8s.scripts[GIT_IMAGE] = PodScript(log=["fatal: could not read Username"], exit_code=128)
    fake_k8s.scripts[BUILDKIT] = PodScript(log=_built_log())
    builder = BuildKitBuilder(Kube.for_url(fake_k8s.url), settings())
    with pytest.raises(BuildError, match="fetching the commit from the forge failed"):
        builder.build(request(tmp_path))
    fake_k8s.scripts[GIT_IMAGE] = PodScript(log=["fetched"])
    unpullable = BuildKitBuilder(Kube.for_url(fake_k8s.url), settings(image="moby/buildkit:nope"))
    with pytest.raises(BuildError, match="could not be pulled"):
        unpullable.build(request(tmp_path))
    assert fake_k8s.of_kind("Job") == []


def test_the_builder_service_hands_the_digest_to_the_run_plan(
    tmp_path: Path, fake_k8s: FakeKubernetes, monkeypatch
) -> None:
    import asyncio

    import secd_builder.buildkit as buildkit_module
    from secd_builder.service import Builder, make_builder
    from secd_shared.artifacts import FolderArtifacts
    from secd_shared.bus import StoredEvent
    from secd_shared.events import encode_event

    fake_k8s.scripts[BUILDKIT] = PodScript(log=_built_log())
    monkeypatch.setattr(
        buildkit_module.Kube, "connect", classmethod(lambda cls, **_: Kube.for_url(fake_k8s.url))
    )
    forge = tmp_path / "forge"
    bare = forge / "alice" / "diabetes-model.git"
    work, first, _ = _repo(tmp_path)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], env=GIT_ENV, check=True)
    config = msgspec.structs.replace(
        Config(state_dir=str(tmp_path)),
        forge=ForgeConfig(root=str(forge)),
        builder=msgspec.structs.replace(BuilderConfig(), kind="buildkit", buildkit=settings()),
    )
    push = PushVerified(
        repository="alice/diabetes-model",
        ref="refs/heads/main",
        head=first,
        commits=[first],
        researcher="alice@example.org",
        keys=[],
    )
    event = new_event(
        push, run_id=RUN, producer=Producer("verifier", "t"), actor="alice@example.org", project="p"
    )
    stored = StoredEvent(seq=1, subject="s", data=encode_event(event))
    store = FolderArtifacts(tmp_path / "artifacts")
    builder = Builder(config, store, make_builder(config, store))
    (succeeded,) = asyncio.run(builder.on_verified(stored))
    # The build log went into the artifact store; the plan names no path of the builder's.
    assert b"exporting to image" in asyncio.run(
        store.get_bytes(succeeded.build_log, max_bytes=1 << 20)
    )
    assert succeeded.plan.source == ""
    assert succeeded.plan.image == f"{REGISTRY}/runs/{dns_name('alice@example.org')}@{DIGEST}"
    assert succeeded.plan.environment == DIGEST
    assert json.loads(msgspec.json.encode(succeeded.plan))["image"].endswith(DIGEST)
