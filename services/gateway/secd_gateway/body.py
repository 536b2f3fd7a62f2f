"""Reading a hook's body with a hard size limit, before anything parses it."""

from __future__ import annotations

from fastapi import HTTPException, Request

__all__ = ["read_body"]


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
