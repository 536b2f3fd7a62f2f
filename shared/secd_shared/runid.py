"""A run's id: `r`, then the creation time in milliseconds (11 hex digits), then 8 random ones.

Time-ordered, 20 characters of [0-9a-f] after the `r`, so it is safe in NATS subjects, SQL account
names (``secd_<run id>``) and Kubernetes object names. On the wire it stays a plain string; code
that takes one from outside (a URL, an event, a database's account list) calls `parse_run_id`.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, NewType

from msgspec import Meta

__all__ = ["RUN_ID_PATTERN", "RunId", "RunIdText", "new_run_id", "parse_run_id", "run_created_at"]

# \A and \Z, not ^ and $: `$` lets a trailing newline through (msgspec's Meta uses re.search).
RUN_ID_PATTERN = r"\Ar[0-9a-f]{19}\Z"
_RUN_ID = re.compile(RUN_ID_PATTERN)

# A run id in a msgspec Struct field: decoding refuses anything else.
RunIdText = Annotated[str, Meta(pattern=RUN_ID_PATTERN)]


# A checked run id. A NewType, not a str subclass: msgspec encodes only exact strs.
RunId = NewType("RunId", str)


def new_run_id() -> RunId:
    """A new run id, stamped with the current time."""
    millis = int(time.time() * 1000)
    return RunId(f"r{millis:011x}{secrets.token_hex(4)}")


def parse_run_id(text: object) -> RunId:
    """`text` as a run id; ValueError saying what a run id looks like when it is not one."""
    if not isinstance(text, str) or _RUN_ID.match(text) is None:
        shown = text[:40] if isinstance(text, str) else text
        raise ValueError(
            f"not a run id: {shown!r}; a run id is 'r' and 19 lowercase hex digits, "
            "like r0192f3a4b5c6d7e8f90"
        )
    return RunId(text)


def run_created_at(run_id: RunId) -> datetime:
    """When the run was created (the gateway's clock, to the millisecond)."""
    return datetime.fromtimestamp(int(run_id[1:12], 16) / 1000, tz=UTC)
