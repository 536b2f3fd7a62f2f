"""GitLab's system hook and project push hook -> push.received.

The hook is authenticated by its secret token (`X-Gitlab-Token`, compared in constant time) and
its event header (`X-Gitlab-Event`); events other than pushes to a branch are answered 2xx and
ignored, so GitLab does not retry or disable the hook. The body must be JSON (GitLab sends
`application/json`), is size-limited and validated: anything malformed gets a 4xx with the
reason and nothing enters the log. The same push sent twice (a retry, or a system hook and a
project hook both configured) is one run. The commits the body lists (if any) are never used:
the verifier reads them from the repository. Whether the pushing user can be a researcher is
the verifier's call (secd_shared.pushes.researcher_of): it rejects, and nothing is written
into the project.
"""

from __future__ import annotations

import hmac
import re

import msgspec
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from secd_gateway.body import read_body, require_json
from secd_gateway.push import check_ref, receive_push
from secd_shared.bus import EventBus
from secd_shared.config import Config, read_secret
from secd_shared.events import Producer, PushReceived
from secd_shared.forge import ForgeError, validate_repository_name
from secd_shared.pushes import PushRegister

__all__ = ["GitLabProject", "GitLabPush", "add_gitlab_hook", "read_webhook_secret"]

# Matched with fullmatch only: `$` in a pattern lets a trailing newline through.
_SHA = re.compile(r"[0-9a-f]{40}")
_USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_PUSH_EVENTS = ("Push Hook", "System Hook")
ZERO = "0" * 40


class GitLabProject(msgspec.Struct):
    """The project part of a push event (GitLab sends many more fields; they are ignored)."""

    id: int
    path_with_namespace: str


class GitLabPush(msgspec.Struct):
    """A push event, as project push hooks and system hooks send it."""

    ref: str
    before: str
    after: str
    user_id: int
    user_username: str
    project_id: int
    project: GitLabProject
    object_kind: str | None = None
    event_name: str | None = None


def read_webhook_secret(config: Config) -> str:
    """The hooks' secret token, from SECD_FORGE__GITLAB__WEBHOOK_SECRET or its file."""
    gitlab = config.forge.gitlab
    return read_secret(
        config, "forge.gitlab.webhook_secret", gitlab.webhook_secret, gitlab.webhook_secret_file
    )


def _ignored(detail: str) -> JSONResponse:
    return JSONResponse({"detail": f"ignored: {detail}"}, status_code=200)


def add_gitlab_hook(
    app: FastAPI,
    config: Config,
    bus: EventBus,
    register: PushRegister,
    secret: str,
    producer: Producer,
) -> None:
    """Serve POST /hooks/gitlab on `app`: pushes to branches become push.received."""
    settings = config.forge.gitlab
    limit = settings.max_hook_bytes
    results = f"refs/heads/{config.forge.results_prefix}"
    service = (settings.service_username or "").lower()

    @app.post("/hooks/gitlab", status_code=202)
    async def gitlab_hook(request: Request) -> JSONResponse:
        """A GitLab push hook or system hook: one pushed branch -> push.received."""
        given = request.headers.get("x-gitlab-token", "")
        # Constant-time comparison: the secret must not leak through timing.
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise HTTPException(401, "missing or wrong X-Gitlab-Token")
        require_json(request)
        event = request.headers.get("x-gitlab-event")
        if event is None:
            raise HTTPException(400, "missing X-Gitlab-Event header")
        if event not in _PUSH_EVENTS:
            return _ignored(f"{event[:60]!r} events do not start runs")
        raw = await read_body(request, limit)
        try:
            kind = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise HTTPException(400, "hook body is not JSON") from None
        if not isinstance(kind, dict):
            raise HTTPException(422, "hook body must be a JSON object")
        # A system hook sends every kind of event (users, projects, tags...): only pushes count.
        name = kind.get("event_name") or kind.get("object_kind")
        if name != "push":
            return _ignored(f"{str(name)[:60]!r} events do not start runs")
        try:
            body = msgspec.convert(kind, GitLabPush)
        except msgspec.ValidationError as exc:
            raise HTTPException(422, f"hook body: {exc}") from None
        _check(body)
        if not body.ref.startswith("refs/heads/"):
            return _ignored("only pushes to branches start runs")
        if body.after == ZERO:
            return _ignored("branch deleted; nothing to run")
        if body.ref.startswith(results):
            return _ignored("results branch; never runs")
        pusher = body.user_username.lower()
        if service and pusher == service:
            return _ignored("pushed by secd's own account")
        push = PushReceived(
            forge="gitlab",
            repository=body.project.path_with_namespace,
            ref=body.ref,
            before=body.before,
            after=body.after,
            pusher=pusher,
            forge_user_id=body.user_id,
            forge_project_id=body.project_id,
        )
        return await receive_push(bus, register, push, producer, actor=pusher)


def _check(body: GitLabPush) -> None:
    try:
        validate_repository_name(body.project.path_with_namespace)
    except ForgeError as exc:
        raise HTTPException(422, str(exc)) from None
    if body.project.id != body.project_id:
        raise HTTPException(422, "project_id and project.id differ")
    check_ref(body.ref)
    for name in ("before", "after"):
        if not _SHA.fullmatch(getattr(body, name)):
            raise HTTPException(422, f"{name} must be a 40-character lowercase hex commit id")
    if not _USERNAME.fullmatch(body.user_username):
        raise HTTPException(422, "user_username is not a GitLab username")
    if body.user_id <= 0 or body.project_id <= 0:
        raise HTTPException(422, "user_id and project_id must be positive")
