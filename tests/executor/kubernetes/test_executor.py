"""The Kubernetes executor's whole flow against FakeKubernetes (no API server runs here).

Create suspended, release, watch, stream logs, collect, delete, reap, fail fast: each test drives
the real executor code through HTTP (and WebSocket, for exec) to the fake, and checks what the
fake was asked to do and what came back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secd_executor.kubernetes import KubernetesExecutor
from secd_shared.kube import Kube
from tests.fakes.kubernetes import FakeKubernetes, PodScript

from .conftest import NAMESPACE, RUN_IMAGE, run_request

pytestmark = pytest.mark.timeout(60)

RUN = "r0123456789abcdef01"
JOB = f"secd-run-{RUN}"


async def _started() -> None:
    return None


def kinds_left(fake: FakeKubernetes) -> dict[str, list[str]]:
    left: dict[str, list[str]] = {}
    for kind in ("Job", "Pod", "Secret", "PersistentVolumeClaim", "NetworkPolicy", "ConfigMap"):
        names = sorted(o["metadata"]["name"] for o in fake.of_kind(kind, NAMESPACE))
        if names:
            left[kind] = names
    return left


async def test_a_run_goes_create_suspended_release_watch_collect_delete(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    fake_k8s.scripts[RUN_IMAGE] = PodScript(
        log=["loading", "training", "done"],
        files={"/output/model.txt": b"weights", "/output/plots/loss.csv": b"1,0.5\n"},
        symlinks={"/output/passwd": "/etc/passwd"},
        runs_s=0.2,
    )
    executor = make_executor()
    request = run_request(tmp_path)
    starts: list[float] = []

    async def started() -> None:
        starts.append(time.monotonic())

    await executor.prepare(request)
    outcome = await executor.execute(request, started)
    assert (outcome.exit_code, outcome.reason, outcome.timed_out) == (0, None, False)
    assert len(starts) == 1
    assert request.log_path.read_text() == "loading\ntraining\ndone\n"

    excluded = await executor.collect(request)
    assert (request.output_dir / "model.txt").read_bytes() == b"weights"
    assert (request.output_dir / "plots" / "loss.csv").read_bytes() == b"1,0.5\n"
    assert not (request.output_dir / "passwd").exists()
    assert excluded == ["passwd: a link (to '/etc/passwd'), not a file"]

    await executor.cleanup(request)
    # Only the researcher's cache stays; everything of the run is gone.
    assert kinds_left(fake_k8s) == {
        "PersistentVolumeClaim": [executor.cache_claim("alice@example.org")]
    }

    verbs = [(verb, kind) for verb, kind, _, _ in fake_k8s.events]
    order = [e for e in fake_k8s.events if e[0] in ("create", "patch")]
    # The Job exists first, suspended; everything it owns follows; then the release.
    assert order[0] == ("create", "Job", JOB, "true")
    created_before_release = [kind for verb, kind, _, _ in order[1:-2]]
    assert set(created_before_release) >= {"Secret", "PersistentVolumeClaim", "NetworkPolicy"}
    release = verbs.index(("patch", "Job"))
    assert release > verbs.index(("create", "NetworkPolicy"))
    assert release > verbs.index(("create", "Secret"))
    assert ("exec", "Pod", f"{JOB}-collect", "tar -C /output -cf - .") in fake_k8s.events
    # The Secret goes before the Job, the policy only after the pods are gone.
    deletes = [kind for verb, kind, _, _ in fake_k8s.events if verb == "delete"]
    assert deletes.index("Secret") < deletes.index("Job") < deletes.index("NetworkPolicy")


async def test_owned_objects_name_the_job_so_deleting_it_deletes_them(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    executor = make_executor()
    request = run_request(tmp_path)
    await executor.prepare(request)
    job = fake_k8s.find("Job", NAMESPACE, JOB)
    assert job is not None and job["spec"]["suspend"] is True
    for kind, name in (
        ("Secret", f"{JOB}-db"),
        ("PersistentVolumeClaim", f"{JOB}-output"),
        ("NetworkPolicy", JOB),
    ):
        owned = fake_k8s.find(kind, NAMESPACE, name)
        assert owned is not None, kind
        assert owned["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    # Nothing runs while suspended.
    await asyncio.sleep(0.1)
    assert fake_k8s.of_kind("Pod", NAMESPACE) == []
    # The fake's garbage collector, as a cluster's, removes owned objects with their owner.
    Kube.for_url(fake_k8s.url).delete("Job", NAMESPACE, JOB)
    assert kinds_left(fake_k8s) == {
        "PersistentVolumeClaim": [executor.cache_claim("alice@example.org")]
    }


async def test_every_step_is_safe_to_call_twice_and_a_second_executor_adopts_the_run(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    fake_k8s.scripts[RUN_IMAGE] = PodScript(log=["once"], files={"/output/a.txt": b"a"})
    first = make_executor()
    request = run_request(tmp_path)
    await first.prepare(request)
    await first.prepare(request)
    outcome = await first.execute(request, _started)
    # The executor 'crashes' here; the redelivered event reaches another replica.
    second = make_executor()
    await second.prepare(request)
    again = await second.execute(request, _started)
    assert again.exit_code == outcome.exit_code == 0
    assert await second.collect(request) == []
    assert await second.collect(request) == []
    assert (request.output_dir / "a.txt").read_bytes() == b"a"
    await second.cleanup(request)
    await second.cleanup(request)
    job_creates = [e for e in fake_k8s.events if e[:2] == ("create", "Job")]
    assert len(job_creates) == 1  # adopted, never run twice
    releases = [e for e in fake_k8s.events if e[:2] == ("patch", "Job")]
    assert len(releases) == 1
    assert "Job" not in kinds_left(fake_k8s)


async def test_logs_stream_while_the_job_runs(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    fake_k8s.scripts[RUN_IMAGE] = PodScript(
        log=[f"epoch {i}" for i in range(10)], interval_s=0.1, runs_s=1.0
    )
    executor = make_executor()
    request = run_request(tmp_path)
    await executor.prepare(request)
    task = asyncio.create_task(executor.execute(request, _started))
    seen_while_running = ""
    deadline = time.monotonic() + 10
    while not task.done() and time.monotonic() < deadline:
        if request.log_path.exists():
            seen_while_running = request.log_path.read_text()
            if "epoch 2" in seen_while_running:
                break
        await asyncio.sleep(0.02)
    assert not task.done(), "the job ended before its log was seen"
    assert seen_while_running.startswith("epoch 0\nepoch 1\nepoch 2\n")
    outcome = await task
    assert outcome.exit_code == 0
    assert request.log_path.read_text().splitlines()[-1] == "epoch 9"
    await executor.cleanup(request)


async def test_a_non_zero_exit_is_reported_with_its_code_and_outputs_still_collected(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    fake_k8s.scripts[RUN_IMAGE] = PodScript(
        log=["Traceback: boom"], exit_code=3, files={"/output/partial.txt": b"p"}
    )
    executor = make_executor()
    request = run_request(tmp_path)
    await executor.prepare(request)
    outcome = await executor.execute(request, _started)
    # Ran to its end: no reason of the runtime's own (the handler says "exited with code 3").
    assert (outcome.exit_code, outcome.reason, outcome.started) == (3, None, True)
    await executor.collect(request)
    assert (request.output_dir / "partial.txt").read_bytes() == b"p"
    await executor.cleanup(request)


async def test_a_job_past_its_deadline_is_stopped_and_reported_as_timed_out(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    fake_k8s.scripts[RUN_IMAGE] = PodScript(log=["still going"], runs_s=None)
    executor = make_executor()
    # runfor 1/3600 h: activeDeadlineSeconds 1.
    request = run_request(tmp_path, runfor_h=1 / 3600)
    await executor.prepare(request)
    assert fake_k8s.find("Job", NAMESPACE, JOB)["spec"]["activeDeadlineSeconds"] == 1
    began = time.monotonic()
    outcome = await executor.execute(request, _started)
    assert time.monotonic() - began < 5
    assert outcome.timed_out is True
    assert outcome.started is True
    job = fake_k8s.find("Job", NAMESPACE, JOB)
    assert job["status"]["conditions"][-1]["reason"] == "DeadlineExceeded"
    assert "still going" in request.log_path.read_text()
    await executor.collect(request)
    await executor.cleanup(request)
    assert "Job" not in kinds_left(fake_k8s)


async def test_an_image_that_cannot_be_pulled_fails_fast_with_that_reason(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    # No script for the image: the fake kubelet cannot pull it. The deadline is an hour away.
    executor = make_executor()
    request = run_request(tmp_path, image="registry.example.org/nope@sha256:" + "0" * 64)
    await executor.prepare(request)
    began = time.monotonic()
    outcome = await executor.execute(request, _started)
    assert time.monotonic() - began < 5
    assert outcome.started is False
    assert outcome.reason is not None
    assert outcome.reason.startswith("the image could not be pulled (ErrImagePull")
    assert "registry.example.org/nope" in outcome.reason
    await executor.cleanup(request)
    assert "Job" not in kinds_left(fake_k8s) and "Pod" not in kinds_left(fake_k8s)


async def test_an_image_that_runs_as_root_fails_fast_with_that_reason(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    fake_k8s.scripts[RUN_IMAGE] = PodScript(user=0)
    # With the image's own USER honoured, the kubelet refuses root.
    executor = make_executor(run_as_image_user=True)
    request = run_request(tmp_path)
    await executor.prepare(request)
    outcome = await executor.execute(request, _started)
    assert outcome.started is False
    assert outcome.reason == (
        "the image runs as root, and secd runs jobs as a non-root user: "
        "add `USER 65534` to the Dockerfile"
    )
    await executor.cleanup(request)
    # The same image runs when the site pins the uid.
    pinned = make_executor(run_as_image_user=False, run_as_user=65534)
    request = run_request(tmp_path, run_id="r0123456789abcdef02")
    await pinned.prepare(request)
    assert (await pinned.execute(request, _started)).exit_code == 0
    await pinned.cleanup(request)


async def test_the_reaper_removes_what_ended_runs_left_and_nothing_else(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    executor = make_executor(reap_grace_s=600)
    labels = lambda run, role: {  # noqa: E731
        "app.kubernetes.io/managed-by": "secd-executor",
        "secd.io/run": run,
        "secd.io/role": role,
    }
    long_ago = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ended = {
        "conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": long_ago}],
        "startTime": long_ago,
        "completionTime": long_ago,
    }
    template = {
        "metadata": {"labels": {"secd.io/run": "x"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": RUN_IMAGE}]},
    }

    def job(name: str, run: str) -> dict:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(run, "job")},
            "spec": {"suspend": True, "template": template},
        }

    def secret(name: str, run: str) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(run, "secret")},
        }

    fake_k8s.seed(job("secd-run-old", "old"), age_s=7200, status=ended)
    fake_k8s.seed(secret("secd-run-old-db", "old"), age_s=7200)
    fake_k8s.seed(secret("secd-run-orphan-db", "orphan"), age_s=7200)
    fake_k8s.seed(secret("secd-run-young-db", "young"), age_s=10)
    running = {"startTime": long_ago, "active": 1}
    live = job("secd-run-live", "live")
    live["spec"]["suspend"] = False
    fake_k8s.seed(live, age_s=7200, status=running)  # running: not ended
    fake_k8s.seed(job("secd-run-stuck", "stuck"), age_s=7200)  # never released
    fake_k8s.seed(secret("secd-run-live-db", "live"), age_s=7200)
    fake_k8s.seed(job("secd-run-ancient", "ancient"), age_s=40 * 3600)  # beyond any runfor
    fake_k8s.seed(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "secd-cache-alice",
                "namespace": NAMESPACE,
                "labels": {
                    "app.kubernetes.io/managed-by": "secd-executor",
                    "secd.io/role": "cache",
                },
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        age_s=90 * 86400,
    )
    fake_k8s.seed(
        secret("someone-elses", "old")
        | {"metadata": {"name": "someone-elses", "namespace": NAMESPACE}},
        age_s=7200,
    )

    removed = await asyncio.to_thread(executor.reap)
    assert sorted(removed) == [
        "Job/secd-run-ancient",
        "Job/secd-run-old",
        "Job/secd-run-stuck",
        "Secret/secd-run-old-db",
        "Secret/secd-run-orphan-db",
    ]
    left = kinds_left(fake_k8s)
    # The live Job's own pod (made by the fake's Job controller) is left alone too.
    assert [p.rsplit("-", 1)[0] for p in left.pop("Pod", [])] in ([], ["secd-run-live"])
    assert left == {
        "Job": ["secd-run-live"],
        "PersistentVolumeClaim": ["secd-cache-alice"],
        "Secret": ["secd-run-live-db", "secd-run-young-db", "someone-elses"],
    }
    assert await asyncio.to_thread(executor.reap) == []  # a second pass finds nothing


async def test_a_deadline_whose_pod_is_already_gone_still_reads_as_timed_out(
    fake_k8s: FakeKubernetes, make_executor: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    # A cluster deletes the pod of a Job stopped at its deadline; a slow poll sees no pod at all.
    fake_k8s.deadline_pod_grace_s = 0.0
    fake_k8s.scripts[RUN_IMAGE] = PodScript(log=["working"], runs_s=None)
    executor = make_executor(poll_s=0.3)
    request = run_request(tmp_path, runfor_h=1 / 3600)
    await executor.prepare(request)
    outcome = await executor.execute(request, _started)
    assert (outcome.timed_out, outcome.started, outcome.reason) == (True, True, None)
    assert "working" in request.log_path.read_text()
    await executor.cleanup(request)
