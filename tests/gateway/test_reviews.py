"""The review API (secd_gateway.reviews) against a real NATS: officers by token and by role
(the groups file), votes recorded as review.recorded chained to outputs.held, and what an
officer sees of the other officers' votes (counts only)."""

from __future__ import annotations

import pytest

from secd_shared.events import event_hash
from tests.gateway.reviewworld import TOKENS


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


async def vote(client, held, name, sha, decision="approve", reason="aggregates only"):
    return await client.post(
        f"/reviews/{held.run_id}/{sha}",
        json={"decision": decision, "reason": reason},
        headers=bearer(name),
    )


async def reviews_of(admin_bus, run_id):
    return [s for s in await admin_bus.read_run(run_id) if s.event.type == "review.recorded"]


async def test_only_an_officer_with_the_role_gets_in(review_gateway, held):
    assert (await review_gateway.get("/reviews")).status_code == 401
    wrong = await review_gateway.get("/reviews", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "not a security officer's token" in wrong.text
    # mallory's token is listed, but the identity source does not give her the role.
    refused = await review_gateway.get("/reviews", headers=bearer("mallory"))
    assert refused.status_code == 403 and "officers' group" in refused.text
    listing = await review_gateway.get("/reviews", headers=bearer("officer-1"))
    assert listing.status_code == 200
    (run,) = [r for r in listing.json()["runs"] if r["run_id"] == held.run_id]
    assert run["researcher"] == "alice" and run["held"] == 2


async def test_a_vote_is_recorded_once_chained_to_the_hold(review_gateway, held, admin_bus):
    first = await vote(review_gateway, held, "officer-1", held.dump, reason="synthetic data")
    assert first.status_code == 202, first.text
    again = await vote(review_gateway, held, "officer-1", held.dump)
    assert again.status_code == 409 and "decided on this file already" in again.text
    (stored,) = await reviews_of(admin_bus, held.run_id)
    review = stored.event
    assert (review.actor, review.payload.officer, review.payload.decision) == (
        "officer-1", "officer-1", "approve",
    )  # fmt: skip
    hold = next(s for s in await admin_bus.read_run(held.run_id) if s.event.type == "outputs.held")
    assert review.causation_id == hold.event.id
    assert review.causation_hash == event_hash(hold.data)


async def test_the_researcher_cannot_review_her_own_run_though_an_officer(
    review_gateway, held, admin_bus
):
    # alice is an officer (she may review others' runs) and the researcher of this one; the
    # run's first event's actor is the forge account `root`, not her.
    assert (await review_gateway.get("/reviews", headers=bearer("alice"))).status_code == 200
    shown = (await review_gateway.get(f"/reviews/{held.run_id}", headers=bearer("alice"))).json()
    assert shown["own_run"] is True
    refused = await vote(review_gateway, held, "alice", held.table)
    assert refused.status_code == 403 and "their own run" in refused.text
    assert await reviews_of(admin_bus, held.run_id) == []


async def test_an_officer_sees_counts_not_the_other_officers_votes(review_gateway, held):
    await vote(review_gateway, held, "officer-1", held.table, reason="secret-reason-one")
    shown = await review_gateway.get(f"/reviews/{held.run_id}", headers=bearer("officer-2"))
    assert shown.status_code == 200
    table = next(f for f in shown.json()["files"] if f["sha256"] == held.table)
    assert (table["approvals"], table["needed"], table["your_vote"]) == (1, 2, None)
    assert "officer-1" not in shown.text and "secret-reason-one" not in shown.text
    mine = await review_gateway.get(f"/reviews/{held.run_id}", headers=bearer("officer-1"))
    table = next(f for f in mine.json()["files"] if f["sha256"] == held.table)
    assert table["your_vote"] == {"decision": "approve", "reason": "secret-reason-one"}
    assert mine.json()["granted"] == ["patients"] and mine.json()["commits"]


@pytest.mark.parametrize(
    ("decision", "reason", "status", "says"),
    [
        ("approve", "", 422, "overriding them needs a reason"),
        ("reject", "", 422, "a rejection needs a reason"),
        ("maybe", "x", 422, "'approve' or 'reject'"),
    ],
)
async def test_a_vote_without_what_it_needs_is_refused(
    review_gateway, held, admin_bus, decision, reason, status, says
):
    refused = await vote(review_gateway, held, "officer-2", held.dump, decision, reason)
    assert refused.status_code == status and says in refused.text
    assert await reviews_of(admin_bus, held.run_id) == []


async def test_unknown_runs_and_files_are_404(review_gateway, held):
    # A run id of the right shape that no run has: the held one with its last digit changed.
    other = held.run_id[:-1] + ("1" if held.run_id.endswith("0") else "0")
    for path in ("/reviews/not-a-run", f"/reviews/{other}"):
        assert (await review_gateway.get(path, headers=bearer("officer-1"))).status_code == 404
    missing = await vote(review_gateway, held, "officer-1", "f" * 64)
    assert missing.status_code == 404
