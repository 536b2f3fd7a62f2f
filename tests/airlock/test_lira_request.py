"""An officer's LiRA request end to end on a real NATS: the gateway's ReviewDesk records
review.requested, the airlock's worker (Airlock.on_request on consumer airlock-requests, as
the `airlock` identity) reads the held model from the artifact store, runs LiRA in the real
model environment against the granted table, and writes outputs.attacked, which the review
state shows."""

from __future__ import annotations

import asyncio

from secd_airlock.checks import Rules
from secd_airlock.service import Airlock
from secd_gateway.reviews import ReviewDesk, review_state
from secd_shared.artifacts import NatsArtifacts, Tree, TreeFile
from secd_shared.events import Producer
from secd_shared.worker import Worker
from tests.airlock import test_models
from tests.gateway.reviewworld import held_model_run_events, write_run
from tests.helpers import wait_until

# The model tests' fixtures: the real model environment, its corpus and table.
model_env, corpus, patients = test_models.model_env, test_models.corpus, test_models.patients


class FakeOfficerRole:
    """The identity port's answer: everyone asked about is an officer."""

    def is_officer(self, person: str) -> bool:
        return True


class GrantedTables:
    """Sources' two methods the model checks use, over the corpus's table."""

    def __init__(self, table) -> None:
        self.table = table

    def covers(self, database: str) -> bool:
        return database == "sensitive"

    async def tables(self, database, names, max_rows):
        return [self.table] if "patients" in names else []


async def test_an_officers_lira_request_comes_back_as_figures(
    nats_server,
    admin_bus,
    corpus,
    patients,
    model_env,
):
    executor = await nats_server.bus("executor")
    gateway = await nats_server.bus("gateway")
    airlock_bus = await nats_server.bus("airlock")
    try:
        model = (corpus / "knn1.skops").read_bytes()
        store = NatsArtifacts(executor.js)
        digest = await store.put_bytes(model)
        tree = Tree((TreeFile("out/model.skops", digest, len(model)),))
        outputs = await store.put_bytes(tree.encode())
        sha = digest.removeprefix("sha256:")
        run_id, run = held_model_run_events(sha, outputs)
        await write_run(admin_bus, run)

        desk = ReviewDesk(gateway, {}, FakeOfficerRole(), Producer("gateway", "t"), 2)
        await desk.request_attack(run_id, sha, "officer-1", "lira")

        airlock = Airlock(
            airlock_bus, NatsArtifacts(airlock_bus.js), GrantedTables(patients), Rules(),
            models=model_env,
        )  # fmt: skip
        worker = Worker(
            airlock_bus, producer=Producer("airlock", "t"), consumer="airlock-requests",
            handler=airlock.on_request, ack_wait_s=2.0, max_deliver=3, fail_runs=False,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))

        async def answered():
            found = [
                s for s in await admin_bus.read_run(run_id) if s.event.type == "outputs.attacked"
            ]
            return found[0] if found else None

        try:
            stored = await wait_until(answered, timeout=120)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        request = next(
            s for s in await admin_bus.read_run(run_id) if s.event.type == "review.requested"
        )
        attacked = stored.event.payload
        assert stored.event.causation_id == request.event.id == attacked.request
        assert (attacked.sha256, attacked.attack) == (sha, "lira")
        assert attacked.verdict in ("review", "block"), attacked.evidence
        assert attacked.figures["auc"] > Rules().model_lira_auc_review
        assert attacked.figures["shadows"] == Rules().model_lira_shadows
        assert attacked.evidence.startswith("LiRA membership inference: AUC")
        # Figures and words only: no host path, no patient's value.
        assert "/" not in attacked.evidence and "P1000" not in attacked.evidence
        state = review_state([s.event for s in await admin_bus.read_run(run_id)], "officer-2", 2)
        (shown,) = state["files"][0]["attacks"]
        assert shown["figures"]["auc"] == attacked.figures["auc"]
        assert state["files"][0]["attacks_pending"] == []
    finally:
        for bus in (executor, gateway, airlock_bus):
            await bus.close()
