"""The credentials handler speaks to the Backend port only: here it runs on a MemoryBackend.

Real NATS (the run's events are written and read back); the database is MemoryBackend, given to
`Credentials` in place of the configured ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from secd_credentials.backends import MemoryBackend
from secd_credentials.service import Credentials
from secd_shared.config import Config, CredentialsConfig, IdentityConfig
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


async def _service(nats_server, tmp_path: Path, groups: list[str], memory: MemoryBackend):
    items = ", ".join(f'"{g}"' for g in groups)
    (tmp_path / "groups.toml").write_text(f"[researchers]\nalice = [{items}]\n")
    config = Config(
        state_dir=str(tmp_path),
        identity=IdentityConfig(groups_file="groups.toml"),
        credentials=CredentialsConfig(
            executor_public_key=generate_keypair(tmp_path / "executor.key"),
            default_database="sensitive",
        ),
    )
    bus = await nats_server.bus("credentials")
    return Credentials(config, bus, backends={"sensitive": memory})


async def _built(admin_bus, run_id: str):
    plan = RunPlan(
        repository="alice/m", ref="refs/heads/main", head="a" * 40, commits=[], environment="e",
        spec=RunSpec(runfor=0.01),
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
