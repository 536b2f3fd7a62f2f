"""credentials.issued -> run.started, run.finished | run.failed through the executor's worker,
with a real NATS and the Kubernetes runtime talking to FakeKubernetes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from secd_executor.bwrap import BwrapRuntime
from secd_executor.kubernetes import KubernetesExecutor
from secd_executor.runtime import RuntimeExecutor
from secd_executor.stub import StubRuntime
from secd_shared.artifacts import FolderArtifacts, get_tree
from secd_shared.config import Config, ExecutorConfig
from secd_shared.events import (
    CredentialsIssued,
    DatabaseAddress,
    Producer,
    RunFinished,
    RunPlan,
    RunSpec,
    new_event,
    new_run_id,
)
from secd_shared.sealing import generate_keypair, seal
from secd_shared.service import producer_for
from secd_shared.worker import Worker
from tests.fakes.kubernetes import FakeKubernetes, PodScript
from tests.helpers import wait_until

from .conftest import NAMESPACE, RUN_IMAGE

pytestmark = pytest.mark.timeout(90)

PASSWORD = "Only-in-the-Secret-7f3a9"


def issued(run_id: str, public_key: str, *, runfor: float = 1.0, image: str | None = RUN_IMAGE):
    plan = RunPlan(
        repository="alice/diabetes-model",
        ref="refs/heads/main",
        head="a" * 40,
        commits=["a" * 40],
        environment="image",
        spec=RunSpec(runfor=runfor, gpu=1, command=["python", "train.py"]),
        image=image,
    )
    payload = CredentialsIssued(
        plan=plan,
        database="sensitive",
        account=f"secd_{run_id}",
        address=DatabaseAddress(kind="postgres", database="sensitive", host="10.9.8.7", port=5432),
        sealed_password=seal(public_key, PASSWORD),
        granted=["patients"],
        refused=[],
        expires_at=datetime.now(UTC) + timedelta(hours=2),
    )
    return new_event(
        payload,
        run_id=run_id,
        producer=Producer("credentials", "test"),
        actor="alice",
        project="alice/diabetes-model",
    )


async def run_through_worker(nats_server, admin_bus, handler, run_id: str) -> list:
    """Run the executor's consumer until the run has a terminal event; return the run's events."""
    bus = await nats_server.bus("executor")
    stop = asyncio.Event()
    worker = Worker(
        bus,
        producer=producer_for("executor"),
        consumer="executor",
        handler=handler,
        ack_wait_s=2.0,
        max_deliver=3,
    )
    task = asyncio.create_task(worker.run(stop))

    async def ended():
        events = [s.event for s in await admin_bus.read_run(run_id)]
        return events if any(e.type in ("run.finished", "run.failed") for e in events) else None

    try:
        return await wait_until(ended, timeout=40)
    finally:
        stop.set()
        await task
        await bus.close()


@pytest.fixture
def executor_setup(tmp_path: Path, fake_k8s: FakeKubernetes, make_executor):
    key = tmp_path / "executor.key"
    public = generate_keypair(key)
    config = msgspec.structs.replace(
        Config(state_dir=str(tmp_path)),
        executor=ExecutorConfig(private_key_file=str(key), runs_dir="runs"),
    )
    runtime: KubernetesExecutor = make_executor()
    store = FolderArtifacts(tmp_path / "artifacts")
    return public, RuntimeExecutor(config, None, runtime, store), tmp_path


async def test_a_run_on_kubernetes_finishes_with_its_outputs_and_log(
    nats_server, admin_bus, fake_k8s: FakeKubernetes, executor_setup, caplog
) -> None:
    public, handler_owner, root = executor_setup
    fake_k8s.scripts[RUN_IMAGE] = PodScript(log=["epoch 1", "saved"], files={"/output/m.txt": b"m"})
    run_id = new_run_id()
    bus = await nats_server.bus("executor")
    handler_owner.bus = bus
    try:
        await admin_bus.publish(issued(run_id, public))
        events = await run_through_worker(nats_server, admin_bus, handler_owner.on_issued, run_id)
    finally:
        await bus.close()
    types = [e.type for e in events]
    assert types == ["credentials.issued", "run.started", "run.finished"]
    finished = events[-1].payload
    assert finished.exit_code == 0
    # Outputs and log travel by digest; the executor keeps no copy.
    store = handler_owner.store
    tree = await get_tree(store, finished.outputs, root / "fetched")
    assert [f.path for f in tree.files] == ["m.txt"]
    assert (root / "fetched" / "m.txt").read_bytes() == b"m"
    assert await store.get_bytes(finished.log, max_bytes=1000) == b"epoch 1\nsaved\n"
    assert not (root / "runs" / run_id).exists()
    # What the cluster was given: the GPU, the command, and the password only in the Secret.
    job_create = next(e for e in fake_k8s.events if e[:2] == ("create", "Job"))
    assert job_create[3] == "true"
    assert fake_k8s.of_kind("Job", NAMESPACE) == []
    assert PASSWORD not in json.dumps([msgspec.to_builtins(e) for e in events])
    assert PASSWORD not in caplog.text


async def test_a_run_past_runfor_fails_with_the_deadline_reason(
    nats_server, admin_bus, fake_k8s: FakeKubernetes, executor_setup
) -> None:
    public, handler_owner, _ = executor_setup
    fake_k8s.scripts[RUN_IMAGE] = PodScript(log=["forever"], runs_s=None)
    run_id = new_run_id()
    bus = await nats_server.bus("executor")
    handler_owner.bus = bus
    try:
        await admin_bus.publish(issued(run_id, public, runfor=1 / 3600))
        events = await run_through_worker(nats_server, admin_bus, handler_owner.on_issued, run_id)
    finally:
        await bus.close()
    assert [e.type for e in events] == ["credentials.issued", "run.started", "run.failed"]
    failed = events[-1].payload
    assert failed.stage == "executor"
    assert failed.reason == "the job ran longer than runfor (0.000277778 h) and was stopped"
    # The job's output reaches its log artifact, never the audit log (the publisher reads it).
    assert failed.log_tail == ""
    log = await handler_owner.store.get_bytes(failed.log, max_bytes=1 << 20)
    assert b"forever" in log
    assert fake_k8s.of_kind("Job", NAMESPACE) == []


async def test_an_unpullable_image_fails_the_run_at_once_without_run_started(
    nats_server, admin_bus, fake_k8s: FakeKubernetes, executor_setup
) -> None:
    public, handler_owner, _ = executor_setup
    run_id = new_run_id()
    bus = await nats_server.bus("executor")
    handler_owner.bus = bus
    image = "registry.example.org/missing@sha256:" + "f" * 64
    try:
        await admin_bus.publish(issued(run_id, public, image=image))
        events = await run_through_worker(nats_server, admin_bus, handler_owner.on_issued, run_id)
    finally:
        await bus.close()
    assert [e.type for e in events] == ["credentials.issued", "run.failed"]
    assert events[-1].payload.reason.startswith("the image could not be pulled")
    assert fake_k8s.of_kind("Job", NAMESPACE) == []


async def test_a_plan_without_an_image_is_refused_with_what_to_configure(
    nats_server, admin_bus, executor_setup
) -> None:
    public, handler_owner, _ = executor_setup
    run_id = new_run_id()
    bus = await nats_server.bus("executor")
    handler_owner.bus = bus
    try:
        await admin_bus.publish(issued(run_id, public, image=None))
        events = await run_through_worker(nats_server, admin_bus, handler_owner.on_issued, run_id)
    finally:
        await bus.close()
    assert events[-1].type == "run.failed"
    assert events[-1].payload.reason == (
        "the run has no image to start: executor.kind = kubernetes needs builder.kind = buildkit"
    )


def test_setup_picks_the_runtime_by_config(monkeypatch, tmp_path: Path, fake_k8s) -> None:
    import secd_executor.kubernetes as kube_module
    from secd_executor import service
    from secd_shared.kube import Kube

    key = tmp_path / "k"
    generate_keypair(key)
    config = msgspec.structs.replace(
        Config(state_dir=str(tmp_path)),
        executor=msgspec.structs.replace(
            ExecutorConfig(private_key_file=str(key)),
            kind="kubernetes",
            kubernetes=msgspec.structs.replace(
                ExecutorConfig().kubernetes, collector_image="c", reap_every_s=3600
            ),
        ),
    )
    monkeypatch.setattr(
        kube_module.Kube, "connect", classmethod(lambda cls, **_: Kube.for_url(fake_k8s.url))
    )

    async def go():
        handlers, cleanup = await service.setup(config, None)
        assert handlers["executor"].__self__.__class__ is RuntimeExecutor
        assert isinstance(handlers["executor"].__self__.runtime, KubernetesExecutor)
        await cleanup()
        for kind, runtime_class in (("bwrap", BwrapRuntime), ("stub", StubRuntime)):
            plain, close = await service.setup(
                msgspec.structs.replace(
                    config, executor=ExecutorConfig(private_key_file=str(key), kind=kind)
                ),
                None,
            )
            # One handler, whatever the runtime: only the port differs.
            assert plain["executor"].__self__.__class__ is RuntimeExecutor
            assert isinstance(plain["executor"].__self__.runtime, runtime_class)
            await close()

    asyncio.run(go())


async def test_a_redelivery_after_the_run_ended_creates_no_second_job(
    nats_server, admin_bus, fake_k8s: FakeKubernetes, executor_setup
) -> None:
    public, handler_owner, _ = executor_setup
    run_id = new_run_id()
    bus = await nats_server.bus("executor")
    handler_owner.bus = bus
    try:
        await admin_bus.publish(issued(run_id, public))
        stored_issued = (await admin_bus.read_run(run_id))[-1]
        # The run already ended (the executor crashed before acking its input).
        await admin_bus.publish(
            new_event(
                RunFinished(exit_code=0, duration_s=1.0),
                run_id=run_id,
                producer=Producer("executor", "test"),
                actor="alice",
                project="alice/diabetes-model",
            )
        )
        # The worker reads the run first and never calls the handler (tests/shared/test_worker.py
        # shows it acks such a delivery without calling it).
        worker = Worker(
            bus,
            producer=producer_for("executor"),
            consumer="executor",
            handler=handler_owner.on_issued,
        )
        assert worker.skip_if == ("run.finished", "run.failed")
        assert await worker.already_done(stored_issued)
    finally:
        await bus.close()
    assert fake_k8s.of_kind("Job", NAMESPACE) == []
