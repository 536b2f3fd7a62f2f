"""Neighbour replay in the executor's handler: a run with a replay account runs twice (the stub
runtime), with the same seed, and run.finished names both runs' outputs and logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secd_executor.runtime import REPLAY_SUFFIX, RuntimeExecutor, seed_of
from secd_executor.stub import StubJob, StubRuntime
from secd_shared.artifacts import FolderArtifacts, Tree
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

PRODUCER = Producer("test", "1")


async def _issued(admin_bus, tmp_path: Path, run_id: str, *, replay: bool, kind: str = "postgres"):
    public = generate_keypair(tmp_path / "executor.key")
    plan = RunPlan(
        repository="alice/m", ref="refs/heads/main", head="a" * 40, commits=[], environment="e",
        spec=RunSpec(runfor=0.01, cache_dir="models"),
    )  # fmt: skip
    issued = CredentialsIssued(
        plan=plan,
        database="sensitive",
        account=f"secd_{run_id}",
        address=DatabaseAddress(kind=kind, database="sensitive"),  # type: ignore[arg-type]
        sealed_password=seal(public, "first-password"),
        granted=["patients"],
        refused=[],
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        replay_account=f"secd_{run_id}_n" if replay else None,
        replay_sealed_password=seal(public, "replay-password") if replay else None,
    )
    event = new_event(issued, run_id=run_id, producer=PRODUCER, actor="alice", project="alice/m")
    await admin_bus.publish(event)
    return (await admin_bus.read_run(run_id))[-1]


def _executor(admin_bus, tmp_path: Path, runtime: StubRuntime) -> RuntimeExecutor:
    config = Config(
        state_dir=str(tmp_path),
        executor=ExecutorConfig(kind="stub", private_key_file="executor.key", runs_dir="runs"),
    )
    return RuntimeExecutor(config, admin_bus, runtime, FolderArtifacts(tmp_path / "artifacts"))


async def test_a_replay_run_runs_twice_and_names_both_outputs(admin_bus, tmp_path) -> None:
    run_id = new_run_id()
    runtime = StubRuntime(
        jobs={
            run_id: StubJob(log=("first",), files={"notes.txt": b"41"}),
            run_id + REPLAY_SUFFIX: StubJob(log=("second",), files={"notes.txt": b"40"}),
        }
    )
    stored = await _issued(admin_bus, tmp_path, run_id, replay=True)
    executor = _executor(admin_bus, tmp_path, runtime)

    request = executor.request_for(stored)
    replay = executor.replay_request(stored, request)
    assert replay is not None
    assert (replay.db_user, replay.db_password) == (f"secd_{run_id}_n", "replay-password")
    assert replay.seed == request.seed == seed_of(run_id)
    assert replay.replay and not request.replay
    assert replay.cache_dir is None and request.cache_dir == "models"
    assert replay.output_dir.parent != request.output_dir.parent

    (finished,) = await executor.on_issued(stored)
    assert isinstance(finished, RunFinished)
    assert ("execute", run_id) in runtime.calls
    assert ("execute", run_id + REPLAY_SUFFIX) in runtime.calls
    store = executor.store

    async def notes(tree: str) -> bytes:
        (entry,) = Tree.decode(await store.get_bytes(tree, max_bytes=1 << 20)).files
        assert entry.path == "notes.txt"
        return await store.get_bytes(entry.digest, max_bytes=1 << 20)

    assert await notes(finished.outputs) == b"41"
    assert await notes(finished.replay_outputs) == b"40"
    assert b"second" in await store.get_bytes(finished.replay_log, max_bytes=1 << 20)
    assert b"second" not in await store.get_bytes(finished.log, max_bytes=1 << 20)
    # Nothing of either run stays on this machine.
    assert not request.output_dir.parent.exists() and not replay.output_dir.parent.exists()


@pytest.mark.parametrize(
    ("kind", "replay_database"), [("postgres", "sensitive"), ("mysql", "secd_{run_id}_n")]
)
async def test_the_replay_connects_to_where_its_views_are(
    admin_bus, tmp_path, kind: str, replay_database: str
) -> None:
    # PostgreSQL: the run's database (the account's search_path finds its views); MariaDB: the
    # database named after the replay account, which holds its views (no search_path there).
    run_id = new_run_id()
    stored = await _issued(admin_bus, tmp_path, run_id, replay=True, kind=kind)
    executor = _executor(admin_bus, tmp_path, StubRuntime(StubJob()))
    request = executor.request_for(stored)
    replay = executor.replay_request(stored, request)
    assert replay is not None
    assert request.db_name == "sensitive"
    assert replay.db_name == replay_database.format(run_id=run_id)


async def test_a_run_without_a_replay_account_runs_once(admin_bus, tmp_path) -> None:
    run_id = new_run_id()
    runtime = StubRuntime(StubJob(files={"notes.txt": b"41"}))
    stored = await _issued(admin_bus, tmp_path, run_id, replay=False)
    (finished,) = await _executor(admin_bus, tmp_path, runtime).on_issued(stored)
    assert isinstance(finished, RunFinished)
    assert finished.outputs and finished.replay_outputs == finished.replay_log == ""
    assert [run for _, run in runtime.calls] == [run_id] * len(runtime.calls)
