"""The officers' review page (secd_gateway.review_page) in process, against a real NATS: sign-in
with the token for a session cookie, every page escaped (hostile file names and evidence), the
CSRF token and the Origin check on every form, and no vote shown to another officer."""

from __future__ import annotations

import re

import httpx
import pytest
from markupsafe import escape

from secd_gateway.review_page import COOKIE
from tests.gateway.reviewworld import EVIDENCE, HOSTILE, TOKENS


async def sign_in(client: httpx.AsyncClient, name: str) -> httpx.Response:
    return await client.post("/review/login", data={"token": TOKENS[name]})


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


async def reviews_of(admin_bus, run_id):
    return [s.event for s in await admin_bus.read_run(run_id) if s.event.type == "review.recorded"]


async def test_signing_in_gives_a_strict_httponly_session_cookie(review_gateway):
    assert (await review_gateway.get("/review")).headers["location"] == "/review/login"
    bad = await review_gateway.post("/review/login", data={"token": "guess"})
    assert bad.status_code == 401 and "not a security officer" in bad.text
    assert COOKIE not in bad.headers.get("set-cookie", "")
    no_role = await sign_in(review_gateway, "mallory")
    assert no_role.status_code == 403 and COOKIE not in no_role.headers.get("set-cookie", "")
    signed = await sign_in(review_gateway, "officer-1")
    assert signed.status_code == 303 and signed.headers["location"] == "/review"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/review" in cookie
    assert "Max-Age=" in cookie and "Secure" not in cookie  # plain http here
    assert TOKENS["officer-1"] not in cookie
    page = await review_gateway.get("/review")
    assert page.status_code == 200 and "officer-1" in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text


async def test_the_run_page_escapes_what_the_researcher_wrote(review_gateway, held):
    await sign_in(review_gateway, "officer-1")
    queue = await review_gateway.get("/review")
    assert f'href="/review/{held.run_id}"' in queue.text
    page = await review_gateway.get(f"/review/{held.run_id}")
    assert page.status_code == 200
    assert HOSTILE not in page.text and str(escape(HOSTILE)) in page.text
    assert "<b>bold</b>" not in page.text and str(escape(EVIDENCE)) in page.text
    assert "<script" not in page.text and "<img" not in page.text
    # The run's context: who, which repository and commits, which tables.
    assert 'id="researcher">alice<' in page.text and 'id="granted">patients<' in page.text
    assert "alice/model" in page.text and "0 of 2 approvals recorded" in page.text


async def test_a_vote_needs_the_session_s_csrf_token(review_gateway, held, admin_bus):
    await sign_in(review_gateway, "officer-1")
    url = f"/review/{held.run_id}/{held.table}"
    missing = await review_gateway.post(url, data={"decision": "approve", "reason": "ok"})
    assert missing.status_code == 403 and "security token" in missing.text
    forged = await review_gateway.post(
        url, data={"decision": "approve", "reason": "ok", "csrf": "x" * 43}
    )
    assert forged.status_code == 403
    page = await review_gateway.get(f"/review/{held.run_id}")
    elsewhere = await review_gateway.post(
        url,
        data={"decision": "approve", "reason": "ok", "csrf": csrf_of(page.text)},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status_code == 403 and "another site" in elsewhere.text
    assert await reviews_of(admin_bus, held.run_id) == []
    # Without a session, a token from another officer's page is worth nothing either.
    async with httpx.AsyncClient(
        transport=review_gateway._transport, base_url="http://gateway"
    ) as stranger:
        refused = await stranger.post(
            url, data={"decision": "approve", "reason": "ok", "csrf": csrf_of(page.text)}
        )
        assert refused.status_code == 401
    assert await reviews_of(admin_bus, held.run_id) == []


async def test_a_vote_through_the_page_is_a_review_recorded_and_cannot_repeat(
    review_gateway, held, admin_bus
):
    await sign_in(review_gateway, "officer-1")
    page = await review_gateway.get(f"/review/{held.run_id}")
    done = await review_gateway.post(
        f"/review/{held.run_id}/{held.dump}",
        data={"decision": "approve", "reason": "synthetic  data", "csrf": csrf_of(page.text)},
    )
    assert done.status_code == 303
    after = await review_gateway.get(done.headers["location"])
    assert "Your approval is recorded." in after.text and "You voted: approve" in after.text
    (review,) = await reviews_of(admin_bus, held.run_id)
    assert (review.payload.officer, review.payload.sha256, review.payload.reason) == (
        "officer-1", held.dump, "synthetic data",
    )  # fmt: skip
    twice = await review_gateway.post(
        f"/review/{held.run_id}/{held.dump}",
        data={"decision": "reject", "reason": "changed my mind", "csrf": csrf_of(page.text)},
    )
    assert twice.status_code == 409 and "decided on this file already" in twice.text
    assert len(await reviews_of(admin_bus, held.run_id)) == 1


async def test_the_other_officer_sees_a_count_not_the_vote(review_gateway, held):
    await sign_in(review_gateway, "officer-1")
    page = await review_gateway.get(f"/review/{held.run_id}")
    await review_gateway.post(
        f"/review/{held.run_id}/{held.table}",
        data={"decision": "approve", "reason": "reason-of-officer-one", "csrf": csrf_of(page.text)},
    )
    await review_gateway.post("/review/logout", data={"csrf": csrf_of(page.text)})
    assert (await review_gateway.get("/review")).status_code == 303  # signed out
    await sign_in(review_gateway, "officer-2")
    seen = await review_gateway.get(f"/review/{held.run_id}")
    assert "1 of 2 approvals recorded" in seen.text
    assert "officer-1" not in seen.text and "reason-of-officer-one" not in seen.text
    assert "You voted" not in seen.text


async def test_the_researcher_gets_no_vote_form_on_her_own_run(review_gateway, held, admin_bus):
    await sign_in(review_gateway, "alice")
    page = await review_gateway.get(f"/review/{held.run_id}")
    assert 'id="own-run"' in page.text and 'class="vote"' not in page.text
    refused = await review_gateway.post(
        f"/review/{held.run_id}/{held.table}",
        data={"decision": "approve", "reason": "mine", "csrf": csrf_of(page.text)},
    )
    assert refused.status_code == 403 and "their own run" in refused.text
    assert await reviews_of(admin_bus, held.run_id) == []


@pytest.mark.parametrize("path", ["/review/not-a-run", "/review/r00000000000deadbeef"])
async def test_an_unknown_run_is_a_404_page(review_gateway, path):
    await sign_in(review_gateway, "officer-2")
    page = await review_gateway.get(path)
    assert page.status_code == 404 and "no such run" in page.text
