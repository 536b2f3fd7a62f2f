"""Officers' requests beyond a vote, through the review API and page (a real NATS): LiRA on a
held model (review.requested, chained to outputs.held; its answer, outputs.attacked, shown to
every officer) and the record of a read of a held file on the secure side (review.fetched)."""

from __future__ import annotations

import hashlib

from secd_shared.events import OutputsAttacked, Producer, encode_event, new_event, subject_for
from tests.gateway.reviewworld import TOKENS, held_model_run_events, write_run
from tests.gateway.test_review_page import csrf_of, sign_in

MODEL = hashlib.sha256(b"a model").hexdigest()


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


async def events_of(admin_bus, run_id, event_type):
    return [s for s in await admin_bus.read_run(run_id) if s.event.type == event_type]


async def held_model(admin_bus) -> str:
    run_id, run = held_model_run_events(MODEL)
    await write_run(admin_bus, run)
    return run_id


async def test_an_officer_asks_for_lira_once_and_sees_its_figures(review_gateway, admin_bus):
    run_id = await held_model(admin_bus)
    url = f"/reviews/{run_id}/{MODEL}/attacks"
    asked = await review_gateway.post(url, json={"attack": "lira"}, headers=bearer("officer-1"))
    assert asked.status_code == 202, asked.text
    (request,) = await events_of(admin_bus, run_id, "review.requested")
    assert (request.event.actor, request.event.payload.officer) == ("officer-1", "officer-1")
    assert (request.event.payload.sha256, request.event.payload.attack) == (MODEL, "lira")
    hold = (await events_of(admin_bus, run_id, "outputs.held"))[0]
    assert request.event.causation_id == hold.event.id
    # While the airlock works on it, no officer asks again; both see it waiting.
    again = await review_gateway.post(url, json={"attack": "lira"}, headers=bearer("officer-2"))
    assert again.status_code == 409 and "asked for already" in again.text
    shown = (await review_gateway.get(f"/reviews/{run_id}", headers=bearer("officer-2"))).json()
    assert shown["files"][0]["attacks_pending"] == ["lira"]
    # The airlock's answer (as secd_airlock.service.Airlock.on_request writes it).
    answer = new_event(
        OutputsAttacked(
            sha256=MODEL, attack="lira", verdict="block", evidence="LiRA membership inference: "
            "AUC 0.812", figures={"auc": 0.812, "shadows": 16.0}, request=request.event.id,
        ),
        run_id=run_id, producer=Producer("airlock", "t"), actor="officer-1", project="alice/model",
        cause=request.event, cause_data=request.data,
    )  # fmt: skip
    await admin_bus.js.publish(subject_for(run_id, answer.type), encode_event(answer))
    shown = (await review_gateway.get(f"/reviews/{run_id}", headers=bearer("officer-2"))).json()
    (attack,) = shown["files"][0]["attacks"]
    assert shown["files"][0]["attacks_pending"] == []
    assert (attack["attack"], attack["verdict"], attack["figures"]["auc"]) == (
        "lira",
        "block",
        0.812,
    )
    # Answered: it may be asked for again (another table, other rules).
    again = await review_gateway.post(url, json={"attack": "lira"}, headers=bearer("officer-2"))
    assert again.status_code == 202


async def test_lira_is_refused_where_it_cannot_run(review_gateway, admin_bus, held):
    run_id = await held_model(admin_bus)
    unknown = await review_gateway.post(
        f"/reviews/{run_id}/{MODEL}/attacks", json={"attack": "mia"}, headers=bearer("officer-1")
    )
    assert unknown.status_code == 422 and "one of lira" in unknown.text
    table = await review_gateway.post(
        f"/reviews/{held.run_id}/{held.table}/attacks",
        json={"attack": "lira"}, headers=bearer("officer-1"),
    )  # fmt: skip
    assert table.status_code == 422 and "kind model; this one is table" in table.text
    own = await review_gateway.post(
        f"/reviews/{run_id}/{MODEL}/attacks", json={"attack": "lira"}, headers=bearer("alice")
    )
    assert own.status_code == 403 and "their own run" in own.text
    nobody = await review_gateway.post(
        f"/reviews/{run_id}/{MODEL}/attacks", json={"attack": "lira"}
    )
    assert nobody.status_code == 401
    assert await events_of(admin_bus, run_id, "review.requested") == []


async def test_the_page_asks_for_lira_with_the_session_s_csrf_token(review_gateway, admin_bus):
    run_id = await held_model(admin_bus)
    await sign_in(review_gateway, "officer-2")
    page = await review_gateway.get(f"/review/{run_id}")
    assert "Request LiRA" in page.text
    url = f"/review/{run_id}/{MODEL}/attacks"
    forged = await review_gateway.post(url, data={"attack": "lira", "csrf": "x" * 43})
    assert forged.status_code == 403
    done = await review_gateway.post(url, data={"attack": "lira", "csrf": csrf_of(page.text)})
    assert done.status_code == 303
    after = await review_gateway.get(done.headers["location"])
    assert "LiRA is requested" in after.text and "the airlock is running it" in after.text
    assert "Request LiRA" not in after.text
    (request,) = await events_of(admin_bus, run_id, "review.requested")
    assert request.event.payload.officer == "officer-2"


async def test_a_read_of_a_held_file_is_recorded_before_it_is_named(
    review_gateway, admin_bus, held
):
    url = f"/reviews/{held.run_id}/{held.table}/fetched"
    assert (await review_gateway.post(url)).status_code == 401
    own = await review_gateway.post(url, headers=bearer("alice"))
    assert own.status_code == 403
    unknown = await review_gateway.post(
        f"/reviews/{held.run_id}/{'0' * 64}/fetched", headers=bearer("officer-1")
    )
    assert unknown.status_code == 404
    assert await events_of(admin_bus, held.run_id, "review.fetched") == []
    for _ in range(2):  # every read is recorded, the same officer's second one too
        named = await review_gateway.post(url, headers=bearer("officer-1"))
        assert named.status_code == 200, named.text
        assert named.json() == {
            "sha256": held.table, "name": "counts.csv", "kind": "table", "size": 80,
            "state": "held",
        }  # fmt: skip
    reads = await events_of(admin_bus, held.run_id, "review.fetched")
    assert [(r.event.actor, r.event.payload.sha256) for r in reads] == [
        ("officer-1", held.table)
    ] * 2
