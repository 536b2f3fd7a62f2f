"""Reading a hook's body: JSON only, with a hard size limit, before anything parses it."""

from __future__ import annotations

from fastapi import HTTPException, Request

__all__ = ["read_body", "require_json"]


def require_json(request: Request) -> None:
    """415 unless the request says its body is `application/json` (charset utf-8 allowed).

    Both forges send exactly that; anything else (a form, text/plain, no type at all) is not a
    hook from them, and JSON in another charset would be read wrongly.
    """
    given = request.headers.get("content-type", "")
    media_type, *parameters = (part.strip() for part in given.split(";"))
    charset_ok = all(
        name.strip().lower() == "charset" and value.strip().strip('"').lower() == "utf-8"
        for name, _, value in (p.partition("=") for p in parameters if p)
    )
    if media_type.lower() != "application/json" or not charset_ok:
        shown = f"not {given[:80]!r}" if given else "and none was given"
        raise HTTPException(
            415, f"Content-Type must be application/json (charset=utf-8 allowed), {shown}"
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to be larger than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"body larger than {limit} bytes")
    raw = b""
    # A lying or missing Content-Length is caught while reading, not after.
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
    return raw
