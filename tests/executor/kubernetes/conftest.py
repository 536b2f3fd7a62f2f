"""Fixtures for the Kubernetes executor and builder: a FakeKubernetes API server per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from secd_executor.kubernetes import KubernetesExecutor
from secd_executor.runtime import RunRequest
from secd_shared.config import KubernetesRunConfig
from secd_shared.kube import Kube
from secd_shared.limits import Limits
from tests.fakes.kubernetes import FakeKubernetes, PodScript

RUN_IMAGE = "registry.example.org/secd/runs/alice@sha256:" + "a" * 64
COLLECTOR_IMAGE = "registry.example.org/secd/executor@sha256:" + "c" * 64
NAMESPACE = "secd-runs"


@pytest.fixture
def fake_k8s() -> Iterator[FakeKubernetes]:
    """A fresh fake API server, with the collector image known to its 'kubelet'."""
    fake = FakeKubernetes().start()
    fake.scripts[COLLECTOR_IMAGE] = PodScript(runs_s=None)
    yield fake
    fake.stop()
    assert not fake.validation_errors, fake.validation_errors


GiB = 1024**3
# What [limits] resolved to for the test run: the Job's requests and limits come from here.
RUN_LIMITS = Limits(memory=4 * GiB, cpus=1.5, pids=256, tmp=1 * GiB, disk=5 * GiB)


def settings(**overrides: object) -> KubernetesRunConfig:
    """Executor settings as a site would write them, polling fast for tests."""
    base = KubernetesRunConfig(
        namespace=NAMESPACE,
        collector_image=COLLECTOR_IMAGE,
        poll_s=0.02,
        collect_timeout_s=20.0,
    )
    return msgspec.structs.replace(base, **overrides) if overrides else base


@pytest.fixture
def make_executor(fake_k8s: FakeKubernetes) -> Iterator[Callable[..., KubernetesExecutor]]:
    """Build executors talking to the fake (closed at the end)."""
    made: list[KubernetesExecutor] = []

    def make(**overrides: object) -> KubernetesExecutor:
        executor = KubernetesExecutor(Kube.for_url(fake_k8s.url), settings(**overrides))
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.kube.close()


def run_request(tmp_path: Path, run_id: str = "r0123456789abcdef01", **overrides) -> RunRequest:
    """A run as the executor builds it from credentials.issued."""
    request = RunRequest(
        run_id=run_id,
        researcher="alice@example.org",
        project="diabetes-model",
        image=RUN_IMAGE,
        command=["python", "main.py"],
        database="sensitive",
        db_kind="postgres",
        db_host="10.20.30.40",
        db_port=5432,
        db_name="sensitive",
        db_user="secd_r0123",
        db_password="s3cr3t-Passw0rd-that-must-stay-in-the-Secret",
        runfor_h=1.0,
        gpu=0,
        cache_dir="models/bert",
        mount_path="/cache",
        output_dir=tmp_path / run_id / "output",
        log_path=tmp_path / run_id / "job.log",
        limits=RUN_LIMITS,
    )
    request = replace(request, **overrides) if overrides else request
    request.output_dir.mkdir(parents=True, exist_ok=True)
    return request
