"""Security officers' side of the airlock: what is held, and their decisions (`review.recorded`).

Officers authenticate with a bearer token of their own; `[gateway] officers_file` maps each
officer to the sha256 of their token (the tokens themselves are never stored here). A decision is
one `review.recorded` event per officer and file (its first vote counts); the airlock applies
the two-person rule. Officers see what the checks found (check names, verdicts, evidence in
figures); the content of a held file is fetched on the secure side (`secd review fetch`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from pathlib import Path

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from secd_gateway.body import read_body, require_json
from secd_shared.bus import EventBus
from secd_shared.events import (
    Event,
    OutputsChecked,
    OutputsHeld,
    OutputsReleased,
    OutputsWithheld,
    Producer,
    ReviewRecorded,
    new_event,
)
from secd_shared.runid import parse_run_id

__all__ = ["Decision", "add_review_api", "load_officers", "review_state"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_OFFICER = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
MAX_REASON = 1000


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    """An officer's decision on one held file."""

    decision: str
    reason: str = ""


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


def review_state(events: list[Event]) -> dict:
    """A run's airlock state for officers: the checks, each held file and its votes."""
    checked = next((e.payload for e in events if isinstance(e.payload, OutputsChecked)), None)
    held = [f for e in events if isinstance(e.payload, OutputsHeld) for f in e.payload.files]
    decided: dict[str, str] = {}
    for e in events:
        if isinstance(e.payload, OutputsReleased):
            decided.update({f.sha256: "released" for f in e.payload.files})
        elif isinstance(e.payload, OutputsWithheld):
            decided.update({f.sha256: "withheld" for f in e.payload.files})
    votes: dict[str, list[dict]] = {}
    for e in events:
        if isinstance(e.payload, ReviewRecorded):
            votes.setdefault(e.payload.sha256, []).append(
                {
                    "officer": e.payload.officer,
                    "decision": e.payload.decision,
                    "reason": e.payload.reason,
                }
            )
    checks = {f.sha256: f for f in (checked.files if checked else [])}
    files = []
    for item in held:
        seen = checks.get(item.sha256)
        files.append(
            {
                "sha256": item.sha256,
                "name": item.name,
                "route": item.route,
                "reason": item.reason,
                "state": decided.get(item.sha256, "held"),
                "size": seen.size if seen else None,
                "kind": seen.kind if seen else None,
                "checks": [msgspec.to_builtins(c) for c in seen.checks] if seen else [],
                "votes": votes.get(item.sha256, []),
            }
        )
    return {
        "run_id": events[0].run_id if events else None,
        "researcher": events[0].actor if events else None,
        "project": events[0].project if events else None,
        "verdict": checked.verdict if checked else None,
        "undeclared": checked.undeclared if checked else 0,
        "log_checks": [msgspec.to_builtins(c) for c in checked.log] if checked else [],
        "files": files,
    }


def add_review_api(
    app: FastAPI, bus: EventBus, officers_file: str | None, producer: Producer, limit: int
) -> None:
    """GET /reviews, GET /reviews/{run}, POST /reviews/{run}/{sha256}: officers only."""
    officers = load_officers(Path(officers_file)) if officers_file else {}

    def officer(request: Request) -> str:
        if not officers:
            raise HTTPException(404, "no security officers are configured (gateway.officers_file)")
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer "):
            raise HTTPException(
                401,
                "missing Authorization: Bearer <officer token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hashlib.sha256(given.removeprefix("Bearer ").encode()).hexdigest()
        for name, known in officers.items():
            if hmac.compare_digest(digest, known):
                return name
        raise HTTPException(
            401, "not a security officer's token", headers={"WWW-Authenticate": "Bearer"}
        )

    async def events_of(run_id: str) -> list[Event]:
        try:
            parse_run_id(run_id)
        except ValueError:
            raise HTTPException(404, "no such run") from None
        events = [s.event for s in await bus.read_run(run_id)]
        if not events:
            raise HTTPException(404, "no such run")
        return events

    @app.get("/reviews")
    async def pending(_officer: str = Depends(officer)) -> JSONResponse:
        """Runs with files held by the airlock and not yet decided, oldest first."""
        runs = []
        seen: set[str] = set()
        async for stored in bus.read("secd.run.*.outputs_held"):
            run_id = stored.event.run_id
            if run_id in seen:
                continue
            seen.add(run_id)
            state = review_state([s.event for s in await bus.read_run(run_id)])
            waiting = [f for f in state["files"] if f["state"] == "held"]
            if waiting:
                runs.append(
                    {
                        "run_id": run_id,
                        "researcher": state["researcher"],
                        "project": state["project"],
                        "held": len(waiting),
                        "verdict": state["verdict"],
                    }
                )
        return JSONResponse({"runs": runs})

    @app.get("/reviews/{run_id}")
    async def show(run_id: str, _officer: str = Depends(officer)) -> JSONResponse:
        """What the airlock found in one run's outputs, and every vote so far."""
        return JSONResponse(review_state(await events_of(run_id)))

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
        if body.decision not in ("approve", "reject"):
            raise HTTPException(422, "decision must be 'approve' or 'reject'")
        reason = " ".join(body.reason.split())
        if len(reason) > MAX_REASON:
            raise HTTPException(422, f"reason: at most {MAX_REASON} characters")
        if not _SHA256.fullmatch(sha256):
            raise HTTPException(404, "no such held file")
        events = await events_of(run_id)
        state = review_state(events)
        item = next((f for f in state["files"] if f["sha256"] == sha256), None)
        if item is None:
            raise HTTPException(404, "no such held file in this run")
        if item["state"] != "held":
            raise HTTPException(409, f"the file is {item['state']} already")
        if name == state["researcher"]:
            raise HTTPException(403, "an officer cannot review their own run's outputs")
        if any(v["officer"] == name for v in item["votes"]):
            raise HTTPException(409, "you have decided on this file already")
        if body.decision == "reject" and not reason:
            raise HTTPException(422, "a rejection needs a reason the researcher can act on")
        if item["route"] == "override" and body.decision == "approve" and not reason:
            raise HTTPException(422, "the checks blocked this file: overriding them needs a reason")
        payload = ReviewRecorded(officer=name, sha256=sha256, decision=body.decision, reason=reason)
        first = events[0]
        event = new_event(
            payload, run_id=run_id, producer=producer, actor=name, project=first.project
        )
        await bus.publish(event, msg_id=f"{run_id}.review.{name}.{sha256}")
        return JSONResponse(
            {"recorded": body.decision, "officer": name, "sha256": sha256}, status_code=202
        )
