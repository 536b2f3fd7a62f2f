"""The gateway: the forge's hook comes in here and becomes `push.received`; runs are read here.

Anything malformed or unauthenticated gets a 4xx with a reason and leaves nothing in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from secd_gateway.body import read_body, require_json
from secd_gateway.projection import ProjectionLoading, RunProjection
from secd_gateway.push import check_ref, receive_push
from secd_shared.bus import LOG_VIEW_STREAM, EventBus, log_view_subject
from secd_shared.config import Config
from secd_shared.events import TERMINAL_TYPES, PushReceived
from secd_shared.forge import ForgeError, check_pushed_commit, validate_repository_name
from secd_shared.logscan import LogReadError
from secd_shared.pushes import PushRegister, UnknownPusher, researcher_of
from secd_shared.runid import parse_run_id
from secd_shared.service import producer_for
from secd_shared.tail import text_tail

from .gitlab_hook import add_gitlab_hook
from .review_page import add_review_page
from .reviews import OfficerRole, ReviewDesk, add_review_api, load_officers

__all__ = ["HookBody", "create_app"]

log = logging.getLogger("secd.gateway")

# Matched with fullmatch only: `$` in a pattern lets a trailing newline through.
_SHA = re.compile(r"[0-9a-f]{40}")
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
ZERO = "0" * 40


class HookBody(msgspec.Struct, forbid_unknown_fields=True):
    """What the embedded forge's post-receive hook sends for one pushed ref."""

    repository: str
    ref: str
    before: str
    after: str
    pusher: str


def _check_body(body: HookBody) -> None:
    try:
        validate_repository_name(body.repository)
    except ForgeError as exc:
        raise HTTPException(422, str(exc)) from None
    check_ref(body.ref)
    for name in ("before", "after"):
        if not _SHA.fullmatch(getattr(body, name)):
            raise HTTPException(422, f"{name} must be a 40-character lowercase hex commit id")
    if not _ACCOUNT.fullmatch(body.pusher):
        raise HTTPException(422, "pusher is not a valid account name")


def create_app(
    config: Config,
    bus: EventBus,
    token: str,
    *,
    gitlab_secret: str | None = None,
    read_token: str | None = None,
    officer_role: OfficerRole | None = None,
) -> FastAPI:
    """The gateway's HTTP API, bound to a bus and the forge's shared token (or GitLab's secret).

    With `read_token`, the read API (runs, job logs) answers only requests that carry it.
    Security officers' reviews (API and page) need `[gateway] officers_file`; who holds the
    officer role is `officer_role`'s answer (default: the identity port of `[identity]`).
    The runs are read from the gateway's own view of the log (secd_gateway.projection), which
    the app's lifespan starts and keeps up to date; without a lifespan (an in-process client),
    the first request starts it.
    """
    producer = producer_for("gateway")
    limit = config.gateway.max_body_bytes
    register = PushRegister(bus)
    forge_root = config.path(config.forge.root)
    projection = RunProjection(bus)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower = asyncio.create_task(projection.follow())
        try:
            yield
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await projection.close()

    def reader(request: Request) -> None:
        if read_token is None:
            return
        given = request.headers.get("authorization", "")
        # Constant-time, like the hook's token: runs and job output are researchers' data.
        if not hmac.compare_digest(given.encode(), f"Bearer {read_token}".encode()):
            raise HTTPException(
                401,
                "missing or wrong Authorization: Bearer <read token>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    readers = [Depends(reader)]

    app = FastAPI(title="secd gateway", version=producer.version, lifespan=lifespan)
    app.state.projection = projection
    if config.forge.kind == "gitlab":
        if not gitlab_secret:
            raise ValueError("forge.kind is gitlab: the gateway needs the hook's secret token")
        add_gitlab_hook(app, config, bus, register, gitlab_secret, producer)

    if officer_role is None:
        from secd_shared.identity import make_identity

        officer_role = make_identity(config)
    officers_file = config.gateway.officers_file
    desk = ReviewDesk(
        bus,
        load_officers(Path(config.path(officers_file))) if officers_file else {},
        officer_role,
        producer,
        config.airlock.reviewers,
    )
    add_review_api(app, desk, limit)
    add_review_page(app, desk, limit)

    @app.post("/hooks/git", status_code=202)
    async def git_hook(request: Request) -> JSONResponse:
        """The embedded forge's post-receive hook: one pushed ref -> push.received."""
        if config.forge.kind != "git":
            raise HTTPException(404, f"this gateway serves forge.kind = {config.forge.kind!r}")
        given = request.headers.get("x-secd-token", "")
        # Constant-time comparison: the token must not leak through timing.
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong X-Secd-Token")
        require_json(request)
        raw = await read_body(request, limit)
        try:
            body = msgspec.json.decode(raw, type=HookBody)
        except msgspec.ValidationError as exc:
            raise HTTPException(422, f"hook body: {exc}") from None
        except msgspec.DecodeError:
            raise HTTPException(400, "hook body is not JSON") from None
        _check_body(body)
        if body.after == ZERO:
            return JSONResponse({"detail": "branch deleted; nothing to run"}, status_code=200)
        if body.ref.startswith(f"refs/heads/{config.forge.results_prefix}"):
            return JSONResponse({"detail": "results branch; never runs"}, status_code=200)
        push = PushReceived(
            forge="git",
            repository=body.repository,
            ref=body.ref,
            before=body.before,
            after=body.after,
            pusher=body.pusher,
        )
        # Only a known researcher's push to a repository of this forge, of a commit in it,
        # becomes a run: anything else would have secd write a rejection into someone's
        # repository, or log a push that never happened.
        try:
            researcher_of(push, config.forge.accounts)
        except UnknownPusher as exc:
            raise HTTPException(403, str(exc)) from None
        try:
            await asyncio.to_thread(check_pushed_commit, forge_root, body.repository, body.after)
        except ForgeError as exc:
            raise HTTPException(422, str(exc)) from None
        return await receive_push(bus, register, push, producer, actor=body.pusher)

    @app.get("/runs", dependencies=readers)
    async def list_runs(limit: int = 50, researcher: str | None = None) -> Response:
        """Recent runs, newest first, each folded from its events (from the gateway's view)."""
        try:
            body = await projection.listing(max(1, min(limit, 1000)), researcher or None)
        except ProjectionLoading as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "2"}) from None
        except LogReadError as exc:
            raise HTTPException(503, f"the event log cannot be read now: {exc}") from None
        return Response(body, media_type="application/json")

    @app.get("/runs/{run_id}", dependencies=readers)
    async def show_run(run_id: str) -> Response:
        """One run: its state, stage timings, outcome and events."""
        if not _is_run_id(run_id):
            raise HTTPException(404, "no such run")
        try:
            view = await projection.view(run_id)
        except LogReadError as exc:
            raise HTTPException(503, f"the event log cannot be read now: {exc}") from None
        if view is None:
            raise HTTPException(404, "no such run")
        if not view.log_tail and any(t == "run.started" for t, _ in view.events):
            # The job's output is not in the audit log: its tail comes from the checked live log.
            last = await bus.last(log_view_subject(run_id), stream=LOG_VIEW_STREAM)
            if last:
                view.log_tail = text_tail(last)
        return Response(msgspec.json.encode(view.as_dict()), media_type="application/json")

    @app.get("/runs/{run_id}/logs", dependencies=readers)
    async def run_logs(run_id: str, follow: bool = False) -> StreamingResponse:
        """The job's output as the airlock let it through (each line checked); with follow=true
        it keeps streaming until the run has ended."""
        if not _is_run_id(run_id) or not await bus.read_run(run_id):
            raise HTTPException(404, "no such run")

        async def chunks() -> AsyncIterator[bytes]:
            seq = 1
            while True:
                # Read the end of the run first: output shipped before it is then all in.
                ended = follow and any(
                    s.event.type in TERMINAL_TYPES for s in await bus.read_run(run_id)
                )
                async for stored in bus.read(
                    log_view_subject(run_id), start_seq=seq, stream=LOG_VIEW_STREAM
                ):
                    seq = stored.seq + 1
                    yield stored.data
                if not follow or ended:
                    return
                await asyncio.sleep(0.2)

        return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 when the bus is connected."""
        ok = bus.nc.is_connected
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    return app


def read_token(config: Config, file: str | None = None) -> str:
    """A token from its file (default: the hook's), at least 16 characters."""
    path = Path(config.path(file or config.gateway.token_file))
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path} holds a token shorter than 16 characters")
    return token


def _is_run_id(text: str) -> bool:
    try:
        parse_run_id(text)
    except ValueError:
        return False
    return True
