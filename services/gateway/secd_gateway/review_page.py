"""The officers' review page: the queue of held outputs and one run's files, as server-rendered
HTML forms that work without JavaScript.

A browser signs in with the officer's token once (POST /review/login) and gets an opaque
session cookie (HttpOnly, SameSite=Strict, Secure over https, Path=/review) that expires after
SESSION_S; the token itself is never put in a cookie, URL or page. Every form that changes
something carries the session's CSRF token, and a POST whose Origin is another site is refused.
Everything shown is escaped (Jinja2 autoescape): file names, evidence and reasons come from a
researcher's job and may be hostile. A held file's content is never shown. Votes go through
ReviewDesk.vote, exactly as the JSON API's do; a request for LiRA on a held model through
ReviewDesk.request_attack.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from secd_gateway.body import read_body
from secd_gateway.reviews import ReviewDesk, ReviewRefused

__all__ = ["COOKIE", "SESSION_S", "Sessions", "add_review_page"]

COOKIE = "secd_review"
SESSION_S = 8 * 60 * 60  # one working day; then the officer signs in again
MAX_SESSIONS = 1000
_FORM_TYPE = "application/x-www-form-urlencoded"
# No script, no frame, no outside resource; forms post only back here.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: under it a browser sends `Origin: null` with the forms, and the Origin
    # check below could not tell them from another site's.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_NOTICES = {
    "approve": "Your approval is recorded.",
    "reject": "Your rejection is recorded.",
    "lira": "LiRA is requested: its figures appear here when the airlock has run it.",
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("secd_gateway", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


@dataclass
class Session:
    """A signed-in officer's browser: who, the CSRF token of its forms, when it ends."""

    officer: str
    csrf: str
    expires: float


class Sessions:
    """Sessions in the gateway's memory, by the sha256 of their cookie (a restart signs every
    officer out); the oldest go first beyond MAX_SESSIONS."""

    def __init__(self, lifetime_s: float = SESSION_S) -> None:
        self.lifetime_s = lifetime_s
        self._by_digest: OrderedDict[str, Session] = OrderedDict()

    def start(self, officer: str) -> tuple[str, Session]:
        """A new session for `officer`: its cookie value and the session."""
        cookie = secrets.token_urlsafe(32)
        session = Session(officer, secrets.token_urlsafe(32), time.monotonic() + self.lifetime_s)
        self._by_digest[_digest(cookie)] = session
        while len(self._by_digest) > MAX_SESSIONS:
            self._by_digest.popitem(last=False)
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        """The live session of this cookie, or None (unknown, or expired and now forgotten)."""
        if not cookie:
            return None
        key = _digest(cookie)
        session = self._by_digest.get(key)
        if session is not None and session.expires <= time.monotonic():
            del self._by_digest[key]
            return None
        return session

    def end(self, cookie: str | None) -> None:
        """Forget the session of this cookie (signing out)."""
        if cookie:
            self._by_digest.pop(_digest(cookie), None)


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def _page(template: str, code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(template).render(**context)
    return HTMLResponse(html, status_code=code, headers=_HEADERS)


def _error(status: int, detail: str, session: Session | None) -> HTMLResponse:
    return _page("review_error.html", status, status=status, detail=detail, session=session)


def _same_origin(request: Request) -> bool:
    """False when the browser says the form came from another site (Origin header)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin == own


async def _form(request: Request, limit: int) -> dict[str, str]:
    """A posted form's fields (the first value of each), or HTTPException for anything else."""
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != _FORM_TYPE:
        raise HTTPException(415, f"send the form as {_FORM_TYPE}")
    raw = await read_body(request, limit)
    try:
        fields = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form is not valid") from None
    return {k: v[0] for k, v in fields.items()}


def add_review_page(app: FastAPI, desk: ReviewDesk, limit: int) -> None:
    """GET /review (the queue), GET /review/{run}, the sign-in and the vote forms."""
    sessions = Sessions()
    app.state.review_sessions = sessions

    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(COOKIE))

    def login_redirect() -> Response:
        return RedirectResponse("/review/login", status_code=303, headers=_HEADERS)

    async def signed_in(request: Request) -> Session | None:
        """The session, if it is live and its officer still holds the role."""
        session = session_of(request)
        if session is not None:
            await desk.confirm_role(session.officer)
        return session

    async def checked_post(request: Request) -> tuple[Session, dict[str, str]]:
        """A POSTed form from a signed-in officer with the session's CSRF token."""
        if not _same_origin(request):
            raise ReviewRefused(403, "this form was sent from another site; nothing was done")
        session = await signed_in(request)
        if session is None:
            raise ReviewRefused(401, "your session has ended; sign in again")
        form = await _form(request, limit)
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            raise ReviewRefused(
                403, "the form's security token does not match; reload the page and try again"
            )
        return session, form

    @app.get("/review/style.css", include_in_schema=False)
    async def style() -> Response:
        """The page's style sheet (served here: the page loads nothing from elsewhere)."""
        css = _templates.loader.get_source(_templates, "review.css")[0]  # type: ignore[union-attr]
        return Response(css, media_type="text/css", headers=_HEADERS)

    @app.get("/review/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(request: Request) -> Response:
        """The sign-in form: the officer pastes their review token."""
        return _page("review_login.html", session=session_of(request), detail=None)

    @app.post("/review/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Exchange the officer's token for a session cookie."""
        if not _same_origin(request):
            return _error(403, "this form was sent from another site; nothing was done", None)
        form = await _form(request, limit)
        try:
            officer = await desk.authenticate(form.get("token", "").strip())
        except ReviewRefused as exc:
            return _page("review_login.html", exc.status, session=None, detail=exc.detail)
        cookie, _ = sessions.start(officer)
        response = RedirectResponse("/review", status_code=303, headers=_HEADERS)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(sessions.lifetime_s),
            path="/review",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/review/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        """End the session."""
        try:
            await checked_post(request)
        except ReviewRefused as exc:
            return _error(exc.status, exc.detail, None)
        sessions.end(request.cookies.get(COOKIE))
        response = login_redirect()
        response.delete_cookie(COOKIE, path="/review")
        return response

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    async def queue(request: Request) -> Response:
        """Runs with held files, oldest first."""
        try:
            session = await signed_in(request)
        except ReviewRefused as exc:
            return _error(exc.status, exc.detail, None)
        if session is None:
            return login_redirect()
        return _page("review_queue.html", session=session, runs=await desk.queue())

    @app.get("/review/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    async def run(request: Request, run_id: str, recorded: str = "") -> Response:
        """One run: its context, and each held file with its checks, evidence and a vote form."""
        try:
            session = await signed_in(request)
            if session is None:
                return login_redirect()
            state = await desk.show(run_id, session.officer)
        except ReviewRefused as exc:
            return _error(exc.status, exc.detail, session_of(request))
        return _page("review_run.html", session=session, run=state, notice=_NOTICES.get(recorded))

    @app.post("/review/{run_id}/{sha256}", include_in_schema=False)
    async def vote(request: Request, run_id: str, sha256: str) -> Response:
        """Record the signed-in officer's decision on one held file (review.recorded)."""
        try:
            session, form = await checked_post(request)
            decision = form.get("decision", "")
            await desk.vote(run_id, sha256, session.officer, decision, form.get("reason", ""))
        except ReviewRefused as exc:
            return _error(exc.status, exc.detail, session_of(request))
        # Post, then redirect: reloading the page does not send the vote again.
        return RedirectResponse(
            f"/review/{run_id}?recorded={decision}", status_code=303, headers=_HEADERS
        )

    @app.post("/review/{run_id}/{sha256}/attacks", include_in_schema=False)
    async def attack(request: Request, run_id: str, sha256: str) -> Response:
        """Ask the airlock for an attack on one held file (review.requested)."""
        try:
            session, form = await checked_post(request)
            chosen = form.get("attack", "")
            await desk.request_attack(run_id, sha256, session.officer, chosen)
        except ReviewRefused as exc:
            return _error(exc.status, exc.detail, session_of(request))
        return RedirectResponse(
            f"/review/{run_id}?recorded={chosen}", status_code=303, headers=_HEADERS
        )
