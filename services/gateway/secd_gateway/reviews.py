"""Security officers' side of the airlock: what is held, and their decisions (`review.recorded`).

Officers authenticate with a bearer token of their own; `[gateway] officers_file` maps each
officer to the sha256 of their token (the tokens themselves are never stored here). The token
says who the officer is; the identity port says whether they hold the role (a member of
`identity.officer_group`), so removing someone from the group ends their access even while
their token is still listed. A decision is one `review.recorded` event per officer and file
(its first vote counts); the airlock applies the two-person rule.

Officers see what the checks found (check names, verdicts, evidence in figures) and the run's
context, never the content of a held file. Before an officer votes on a file they see how
many approvals it has, never who gave them or why: each decides on their own. The JSON API
here and the web page (secd_gateway.review_page) both go through ReviewDesk.

An officer may also ask the airlock for LiRA on a held model (`review.requested`; the figures
come back as `outputs.attacked` and every officer sees them), and record that they read a
held file on the secure side (`review.fetched`, before `secd review fetch` reads it from the
artifact store there: the gateway never carries a held file's content).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import tomllib
from pathlib import Path
from typing import Any, Protocol

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from secd_gateway.body import read_body, require_json
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.events import (
    AnyPayload,
    CredentialsIssued,
    Event,
    OutputsAttacked,
    OutputsChecked,
    OutputsHeld,
    OutputsReleased,
    OutputsWithheld,
    Producer,
    PushReceived,
    PushVerified,
    ReviewFetched,
    ReviewRecorded,
    ReviewRequested,
    new_event,
)
from secd_shared.identity_port import IdentityError
from secd_shared.runid import parse_run_id
from secd_shared.runs import run_researcher

__all__ = [
    "ATTACKS",
    "AttackRequest",
    "Decision",
    "OfficerRole",
    "ReviewDesk",
    "ReviewRefused",
    "add_review_api",
    "load_officers",
    "review_state",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_OFFICER = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
MAX_REASON = 1000
# How long the identity source's answer on an officer's role is trusted (seconds): removing
# someone from the officers' group takes effect within this time.
ROLE_CACHE_S = 30.0


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    """An officer's decision on one held file."""

    decision: str
    reason: str = ""


class AttackRequest(msgspec.Struct, forbid_unknown_fields=True):
    """An officer's request for an attack on one held file."""

    attack: str


# The attacks an officer may ask for, and the kind of file each runs on.
ATTACKS = {"lira": "model"}


class OfficerRole(Protocol):
    """The part of the identity port the gateway uses (secd_shared.identity)."""

    def is_officer(self, person: str) -> bool:
        """Whether `person` holds the security officers' role; IdentityError if unsure."""
        ...


class ReviewRefused(Exception):
    """A review request refused: the HTTP status and a reason for the officer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def load_officers(path: Path) -> dict[str, str]:
    """officer -> sha256 hex of their token, from the officers file; ValueError if malformed."""
    data = tomllib.loads(path.read_text())
    officers = data.get("officers", {})
    for name, digest in officers.items():
        if not _OFFICER.fullmatch(name) or not isinstance(digest, str):
            raise ValueError(f"{path}: officer {name[:40]!r} is not a valid name and digest")
        if not _SHA256.fullmatch(digest):
            raise ValueError(f"{path}: officer {name!r}: give the sha256 (hex) of the token")
    return dict(officers)


def review_state(events: list[Event], viewer: str, needed: int) -> dict[str, Any]:
    """A run's airlock state as `viewer` (an officer) may see it: the run's context, the checks,
    each held file with its approval count and the viewer's own vote, never another's."""
    checked = next((e.payload for e in events if isinstance(e.payload, OutputsChecked)), None)
    held = [f for e in events if isinstance(e.payload, OutputsHeld) for f in e.payload.files]
    decided: dict[str, str] = {}
    for e in events:
        if isinstance(e.payload, OutputsReleased):
            decided.update({f.sha256: "released" for f in e.payload.files})
        elif isinstance(e.payload, OutputsWithheld):
            decided.update({f.sha256: "withheld" for f in e.payload.files})
    researcher = run_researcher(events)
    votes: dict[str, dict[str, ReviewRecorded]] = {}
    for e in events:
        if isinstance(e.payload, ReviewRecorded) and e.payload.officer != researcher:
            # An officer's first vote counts, as in the airlock (secd_airlock.service.decide).
            votes.setdefault(e.payload.sha256, {}).setdefault(e.payload.officer, e.payload)
    checks = {f.sha256: f for f in (checked.files if checked else [])}
    attacks: dict[str, list[dict[str, Any]]] = {}
    requested: dict[str, dict[str, str]] = {}  # sha256 -> attack -> request id, unanswered
    for e in events:
        if isinstance(e.payload, ReviewRequested):
            requested.setdefault(e.payload.sha256, {})[e.payload.attack] = e.id
        elif isinstance(e.payload, OutputsAttacked):
            answered = e.payload
            waiting = requested.get(answered.sha256, {})
            if waiting.get(answered.attack) == answered.request:
                del waiting[answered.attack]
            attacks.setdefault(answered.sha256, []).append(
                {
                    "attack": answered.attack,
                    "verdict": answered.verdict,
                    "evidence": answered.evidence,
                    "figures": dict(answered.figures),
                    "time": e.time.isoformat(),
                }
            )
    files = []
    for item in held:
        seen = checks.get(item.sha256)
        mine = votes.get(item.sha256, {}).get(viewer)
        files.append(
            {
                "sha256": item.sha256,
                "name": item.name,
                "route": item.route,
                "reason": item.reason,
                "state": decided.get(item.sha256, "held"),
                "size": seen.size if seen else None,
                "kind": seen.kind if seen else None,
                "verdict": seen.verdict if seen else None,
                "checks": [msgspec.to_builtins(c) for c in seen.checks] if seen else [],
                "approvals": sum(
                    v.decision == "approve" for v in votes.get(item.sha256, {}).values()
                ),
                "needed": needed,
                "your_vote": ({"decision": mine.decision, "reason": mine.reason} if mine else None),
                "attacks": attacks.get(item.sha256, []),
                "attacks_pending": sorted(requested.get(item.sha256, {})),
            }
        )
    pushed = next((e.payload for e in events if isinstance(e.payload, PushReceived)), None)
    verified = next((e.payload for e in events if isinstance(e.payload, PushVerified)), None)
    issued = next((e.payload for e in events if isinstance(e.payload, CredentialsIssued)), None)
    return {
        "run_id": events[0].run_id if events else None,
        "researcher": researcher,
        "project": events[0].project if events else None,
        "ref": pushed.ref if pushed else None,
        "head": pushed.after if pushed else None,
        "commits": list(verified.commits) if verified else [],
        "database": issued.database if issued else None,
        "granted": list(issued.granted) if issued else [],
        "verdict": checked.verdict if checked else None,
        "undeclared": checked.undeclared if checked else 0,
        "log_checks": [msgspec.to_builtins(c) for c in checked.log] if checked else [],
        "files": files,
    }


class ReviewDesk:
    """Who is an officer, what they see, and recording their votes: one path for the JSON API
    and the web page."""

    def __init__(
        self,
        bus: EventBus,
        officers: dict[str, str],
        role: OfficerRole,
        producer: Producer,
        needed: int,
    ) -> None:
        """`officers`: name -> sha256 of their token (load_officers); `role`: the identity port."""
        self.bus = bus
        self.officers = officers
        self.role = role
        self.producer = producer
        self.needed = max(1, needed)
        self._roles: dict[str, tuple[bool, float]] = {}

    def officer_of(self, token: str) -> str:
        """The officer whose token this is; ReviewRefused(401) for any other text."""
        if not self.officers:
            raise ReviewRefused(404, "no security officers are configured (gateway.officers_file)")
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for name, known in self.officers.items():
            # Every entry is compared, in constant time: timing says nothing about the token.
            if hmac.compare_digest(digest, known):
                found = name
        if found is None:
            raise ReviewRefused(401, "not a security officer's token")
        return found

    async def confirm_role(self, name: str) -> None:
        """ReviewRefused(403) unless the identity source says `name` is an officer now."""
        cached = self._roles.get(name)
        if cached is None or time.monotonic() - cached[1] > ROLE_CACHE_S:
            try:
                holds = await asyncio.to_thread(self.role.is_officer, name)
            except IdentityError as exc:  # its text names no secret (the port's contract)
                raise ReviewRefused(
                    503, f"the identity source cannot confirm the officer role now: {exc}"
                ) from None
            cached = (holds, time.monotonic())
            self._roles[name] = cached
        if not cached[0]:
            raise ReviewRefused(
                403,
                f"{name} is not in the security officers' group (identity.officer_group); "
                "ask the administrator",
            )

    async def authenticate(self, token: str) -> str:
        """The officer a token belongs to, if they hold the role now."""
        name = self.officer_of(token)
        await self.confirm_role(name)
        return name

    async def run(self, run_id: str) -> list[StoredEvent]:
        """A run's stored events; ReviewRefused(404) for a run that is not one or has none."""
        try:
            parse_run_id(run_id)
        except ValueError:
            raise ReviewRefused(404, "no such run") from None
        stored = await self.bus.read_run(run_id)
        if not stored:
            raise ReviewRefused(404, "no such run")
        return stored

    async def queue(self) -> list[dict[str, Any]]:
        """Runs with files held by the airlock and not yet decided, oldest first."""
        runs = []
        seen: set[str] = set()
        async for stored in self.bus.read("secd.run.*.outputs_held"):
            run_id = stored.event.run_id
            if run_id in seen:
                continue
            seen.add(run_id)
            events = [s.event for s in await self.bus.read_run(run_id)]
            state = review_state(events, viewer="", needed=self.needed)
            waiting = [f for f in state["files"] if f["state"] == "held"]
            if waiting:
                runs.append(
                    {
                        "run_id": run_id,
                        "researcher": state["researcher"],
                        "project": state["project"],
                        "held": len(waiting),
                        "verdict": state["verdict"],
                        "time": events[0].time.isoformat(),
                    }
                )
        return runs

    async def show(self, run_id: str, viewer: str) -> dict[str, Any]:
        """One run's airlock state as `viewer` may see it."""
        events = [s.event for s in await self.run(run_id)]
        state = review_state(events, viewer=viewer, needed=self.needed)
        state["own_run"] = viewer == state["researcher"]
        return state

    async def vote(
        self, run_id: str, sha256: str, officer: str, decision: str, reason: str
    ) -> ReviewRecorded:
        """Record `officer`'s decision on one held file as `review.recorded`, or ReviewRefused
        saying why not (not held, decided already, their own run, voted already, no reason)."""
        if decision not in ("approve", "reject"):
            raise ReviewRefused(422, "decision must be 'approve' or 'reject'")
        reason = " ".join(reason.split())
        if len(reason) > MAX_REASON:
            raise ReviewRefused(422, f"reason: at most {MAX_REASON} characters")
        if not _SHA256.fullmatch(sha256):
            raise ReviewRefused(404, "no such held file")
        stored = await self.run(run_id)
        events = [s.event for s in stored]
        state = review_state(events, viewer=officer, needed=self.needed)
        item = next((f for f in state["files"] if f["sha256"] == sha256), None)
        if item is None:
            raise ReviewRefused(404, "no such held file in this run")
        if item["state"] != "held":
            raise ReviewRefused(409, f"the file is {item['state']} already")
        if officer == state["researcher"]:
            raise ReviewRefused(403, "an officer cannot review their own run's outputs")
        if item["your_vote"] is not None:
            raise ReviewRefused(409, "you have decided on this file already")
        if decision == "reject" and not reason:
            raise ReviewRefused(422, "a rejection needs a reason the researcher can act on")
        if item["route"] == "override" and decision == "approve" and not reason:
            raise ReviewRefused(422, "the checks blocked this file: overriding them needs a reason")
        payload = ReviewRecorded(
            officer=officer,
            sha256=sha256,
            # The same word, as the Literal the event holds (checked at the top).
            decision="approve" if decision == "approve" else "reject",
            reason=reason,
        )
        # Chained to the outputs.held that held the file, like every event to its cause.
        cause = next(
            s
            for s in stored
            if isinstance(s.event.payload, OutputsHeld)
            and any(f.sha256 == sha256 for f in s.event.payload.files)
        )
        await self._record(stored, cause, officer, payload, f"{run_id}.review.{officer}.{sha256}")
        return payload

    async def _held_item(
        self, run_id: str, sha256: str, officer: str
    ) -> tuple[list[StoredEvent], dict[str, Any], StoredEvent]:
        """A held file of a run as `officer` may act on it, with the run and the outputs.held
        that holds it; ReviewRefused for no such file or the officer's own run."""
        if not _SHA256.fullmatch(sha256):
            raise ReviewRefused(404, "no such held file")
        stored = await self.run(run_id)
        state = review_state([s.event for s in stored], viewer=officer, needed=self.needed)
        item = next((f for f in state["files"] if f["sha256"] == sha256), None)
        if item is None:
            raise ReviewRefused(404, "no such held file in this run")
        if officer == state["researcher"]:
            raise ReviewRefused(403, "an officer cannot review their own run's outputs")
        hold = next(
            s
            for s in stored
            if isinstance(s.event.payload, OutputsHeld)
            and any(f.sha256 == sha256 for f in s.event.payload.files)
        )
        return stored, item, hold

    async def _record(
        self,
        stored: list[StoredEvent],
        hold: StoredEvent,
        officer: str,
        payload: AnyPayload,
        key: str,
    ) -> None:
        """Publish an officer's event, chained to the outputs.held that held the file."""
        event = new_event(
            payload,
            run_id=hold.event.run_id,
            producer=self.producer,
            actor=officer,
            project=stored[0].event.project,
            cause=hold.event,
            cause_data=hold.data,
        )
        await self.bus.publish(event, msg_id=key)

    async def request_attack(
        self, run_id: str, sha256: str, officer: str, attack: str
    ) -> ReviewRequested:
        """Record `officer`'s request for an attack (ATTACKS) on one held file as
        review.requested, or ReviewRefused: unknown attack, wrong kind of file, decided
        already, their own run, or the same attack still waiting for the airlock."""
        wanted = ATTACKS.get(attack)
        if wanted is None:
            raise ReviewRefused(422, f"attack: one of {', '.join(sorted(ATTACKS))}")
        stored, item, hold = await self._held_item(run_id, sha256, officer)
        if item["kind"] != wanted:
            raise ReviewRefused(
                422, f"{attack} runs on files of kind {wanted}; this one is {item['kind']}"
            )
        if item["state"] != "held":
            raise ReviewRefused(409, f"the file is {item['state']} already")
        if attack in item["attacks_pending"]:
            raise ReviewRefused(409, f"{attack} was asked for already; the airlock is on it")
        payload = ReviewRequested(officer=officer, sha256=sha256, attack="lira")
        key = f"{run_id}.requested.{officer}.{sha256}.{secrets.token_hex(8)}"
        await self._record(stored, hold, officer, payload, key)
        return payload

    async def record_fetch(self, run_id: str, sha256: str, officer: str) -> dict[str, Any]:
        """Record that `officer` reads one held file on the secure side (review.fetched), and
        say what it is (its sha256, the name shown, kind and size); ReviewRefused for no such
        file or their own run. Recorded before the read: a read is never left out."""
        stored, item, hold = await self._held_item(run_id, sha256, officer)
        payload = ReviewFetched(officer=officer, sha256=sha256)
        key = f"{run_id}.fetched.{officer}.{sha256}.{secrets.token_hex(8)}"
        await self._record(stored, hold, officer, payload, key)
        return {k: item[k] for k in ("sha256", "name", "kind", "size", "state")}


def add_review_api(app: FastAPI, desk: ReviewDesk, limit: int) -> None:
    """GET /reviews, GET /reviews/{run}, POST /reviews/{run}/{sha256} (a vote), POST
    /reviews/{run}/{sha256}/attacks (LiRA) and /reviews/{run}/{sha256}/fetched: officers only."""

    async def officer(request: Request) -> str:
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            if not desk.officers:
                raise HTTPException(
                    404, "no security officers are configured (gateway.officers_file)"
                )
            raise HTTPException(
                401,
                "missing Authorization: Bearer <officer token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return await desk.authenticate(given.removeprefix("Bearer "))
        except ReviewRefused as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise HTTPException(exc.status, exc.detail, headers=headers) from None

    @app.get("/reviews")
    async def pending(_officer: str = Depends(officer)) -> JSONResponse:
        """Runs with files held by the airlock and not yet decided, oldest first."""
        return JSONResponse({"runs": await desk.queue()})

    @app.get("/reviews/{run_id}")
    async def show(run_id: str, name: str = Depends(officer)) -> JSONResponse:
        """What the airlock found in one run's outputs; approval counts and your own votes."""
        try:
            return JSONResponse(await desk.show(run_id, name))
        except ReviewRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None

    @app.post("/reviews/{run_id}/{sha256}", status_code=202)
    async def decide(
        run_id: str, sha256: str, request: Request, name: str = Depends(officer)
    ) -> JSONResponse:
        """Record this officer's decision on one held file."""
        require_json(request)
        try:
            body = msgspec.json.decode(await read_body(request, limit), type=Decision)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise HTTPException(422, f"body: {exc}; send {{decision, reason}}") from None
        try:
            await desk.vote(run_id, sha256, name, body.decision, body.reason)
        except ReviewRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return JSONResponse(
            {"recorded": body.decision, "officer": name, "sha256": sha256}, status_code=202
        )

    @app.post("/reviews/{run_id}/{sha256}/attacks", status_code=202)
    async def attack(
        run_id: str, sha256: str, request: Request, name: str = Depends(officer)
    ) -> JSONResponse:
        """Ask the airlock for an attack on one held file ({"attack": "lira"}); its figures
        appear under the file's `attacks` in GET /reviews/{run}."""
        require_json(request)
        try:
            body = msgspec.json.decode(await read_body(request, limit), type=AttackRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise HTTPException(422, f"body: {exc}; send {{attack}}") from None
        try:
            await desk.request_attack(run_id, sha256, name, body.attack)
        except ReviewRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return JSONResponse(
            {"requested": body.attack, "officer": name, "sha256": sha256}, status_code=202
        )

    @app.post("/reviews/{run_id}/{sha256}/fetched")
    async def fetched(run_id: str, sha256: str, name: str = Depends(officer)) -> JSONResponse:
        """Record that this officer reads a held file on the secure side (review.fetched);
        the answer names the file. The content is not here: `secd review fetch` reads it
        from the artifact store on the secure side."""
        try:
            return JSONResponse(await desk.record_fetch(run_id, sha256, name))
        except ReviewRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None
