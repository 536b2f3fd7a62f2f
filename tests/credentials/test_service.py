"""The credentials handler speaks to the Backend port only: here it runs on a MemoryBackend.

Real NATS (the run's events are written and read back); the database is MemoryBackend, given to
`Credentials` in place of the configured ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from secd_credentials.backends import MemoryBackend
from secd_credentials.service import Credentials
from secd_shared.config import AirlockConfig, Config, CredentialsConfig, IdentityConfig
from secd_shared.events import (
    BuildSucceeded,
    CredentialsIssued,
    CredentialsRevoked,
    Producer,
    RunFinished,
    RunPlan,
    RunSpec,
    new_event,
    new_run_id,
)
from secd_shared.sealing import generate_keypair, load_private_key, unseal
from secd_shared.worker import PermanentError

from .conftest import PATIENTS

PRODUCER = Producer("test", "1")


async def _service(
    nats_server, tmp_path: Path, groups: list[str], memory: MemoryBackend, replay: str = "opt-in"
):
    items = ", ".join(f'"{g}"' for g in groups)
    (tmp_path / "groups.toml").write_text(f"[researchers]\nalice = [{items}]\n")
    config = Config(
        state_dir=str(tmp_path),
        identity=IdentityConfig(groups_file="groups.toml"),
        credentials=CredentialsConfig(
            executor_public_key=generate_keypair(tmp_path / "executor.key"),
            default_database="sensitive",
        ),
        airlock=AirlockConfig(neighbour_replay=replay, neighbour_replay_rows=2),  # type: ignore[arg-type]
    )
    bus = await nats_server.bus("credentials")
    return Credentials(config, bus, backends={"sensitive": memory})


async def _built(admin_bus, run_id: str, *, replay: bool = False):
    plan = RunPlan(
        repository="alice/m", ref="refs/heads/main", head="a" * 40, commits=[], environment="e",
        spec=RunSpec(runfor=0.01, replay=replay),
    )  # fmt: skip
    built = BuildSucceeded(plan=plan, reused=True, build_s=0.0)
    await admin_bus.publish(new_event(built, run_id=run_id, **_common()))
    return (await admin_bus.read_run(run_id))[-1]


def _common() -> dict[str, object]:
    return {"producer": PRODUCER, "actor": "alice", "project": "alice/m"}


async def test_a_run_is_issued_and_revoked_through_the_port(
    nats_server, admin_bus, tmp_path
) -> None:
    memory = MemoryBackend(kind="postgres", tables={"patients": PATIENTS, "billing": []})
    groups = ["postgres-patients-read", "postgres-nosuch-read", "mysql-billing-read", "staff"]
    credentials = await _service(nats_server, tmp_path, groups, memory)
    run_id = new_run_id()
    try:
        (issued,) = await credentials.on_built(await _built(admin_bus, run_id))
        assert isinstance(issued, CredentialsIssued)
        assert issued.granted == ["patients"]
        assert [r.name for r in issued.refused] == ["mysql-billing-read", "staff", "nosuch"]
        assert issued.address == memory.address()
        # The sealed password is the one the account logs in with.
        password = unseal(load_private_key(tmp_path / "executor.key"), issued.sealed_password)
        session = memory.connect(issued.account, password)
        assert session.read("patients") == PATIENTS

        await admin_bus.publish(new_event(issued, run_id=run_id, **_common()))
        finished = RunFinished(exit_code=0, duration_s=0.1)
        await admin_bus.publish(new_event(finished, run_id=run_id, **_common()))
        ended = (await admin_bus.read_run(run_id))[-1]
        assert await credentials.on_ended(ended) == [
            CredentialsRevoked(account=issued.account, backend="postgres")
        ]
        assert memory.granted(issued.account) is None
        with pytest.raises(ConnectionError):
            session.read("patients")
    finally:
        await credentials.close()
        await credentials.bus.close()


async def test_nothing_granted_fails_the_run_and_leaves_no_account(
    nats_server, admin_bus, tmp_path
) -> None:
    memory = MemoryBackend(kind="postgres", tables=["patients"])
    credentials = await _service(nats_server, tmp_path, ["postgres-nosuch-read"], memory)
    try:
        with pytest.raises(PermanentError, match="nosuch: table nosuch does not exist"):
            await credentials.on_built(await _built(admin_bus, new_run_id()))
        assert await memory.accounts() == []
    finally:
        await credentials.close()
        await credentials.bus.close()


ROWS = [(i, f"p{i}") for i in range(10)]


@pytest.mark.parametrize(
    ("mode", "asked", "replayed"),
    [
        ("opt-in", True, True),
        ("opt-in", False, False),
        ("always", False, True),
        ("off", True, False),
    ],
)
async def test_replay_account_is_issued_when_the_site_and_project_say_so(
    nats_server, admin_bus, tmp_path, mode: str, asked: bool, replayed: bool
) -> None:
    memory = MemoryBackend(kind="postgres", tables={"patients": ROWS})
    credentials = await _service(
        nats_server, tmp_path, ["postgres-patients-read"], memory, replay=mode
    )
    run_id = new_run_id()
    try:
        (issued,) = await credentials.on_built(await _built(admin_bus, run_id, replay=asked))
        assert isinstance(issued, CredentialsIssued)
        if not replayed:
            assert issued.replay_account is issued.replay_sealed_password is None
            assert await memory.accounts() == [issued.account]
            return
        assert issued.replay_account == issued.account + "_n"
        assert issued.replay_sealed_password
        key = load_private_key(tmp_path / "executor.key")
        primary = memory.connect(issued.account, unseal(key, issued.sealed_password))
        replay = memory.connect(issued.replay_account, unseal(key, issued.replay_sealed_password))
        assert primary.read("patients") == ROWS
        seen = replay.read("patients")
        assert len(seen) == len(ROWS) - 2 and set(seen) < set(ROWS)
        # The run's end revokes both; the event names the run's own account.
        await admin_bus.publish(new_event(issued, run_id=run_id, **_common()))
        finished = RunFinished(exit_code=0, duration_s=0.1)
        await admin_bus.publish(new_event(finished, run_id=run_id, **_common()))
        ended = (await admin_bus.read_run(run_id))[-1]
        assert await credentials.on_ended(ended) == [
            CredentialsRevoked(account=issued.account, backend="postgres")
        ]
        assert await memory.accounts() == []
    finally:
        await credentials.close()
        await credentials.bus.close()


async def test_replay_on_a_database_without_it_fails_the_run_naming_it(
    nats_server, admin_bus, tmp_path
) -> None:
    # Neo4j has no replay (PostgreSQL and MariaDB have).
    memory = MemoryBackend(kind="neo4j", tables={"patients": ROWS})
    credentials = await _service(nats_server, tmp_path, ["neo4j-patients-read"], memory)
    try:
        # MemoryBackend can replay; a backend that cannot is one without issue_replay.
        memory.issue_replay = None  # type: ignore[assignment]
        with pytest.raises(PermanentError, match="neighbour replay is not available on neo4j"):
            await credentials.on_built(await _built(admin_bus, new_run_id(), replay=True))
        assert await memory.accounts() == []
    finally:
        await credentials.close()
        await credentials.bus.close()
