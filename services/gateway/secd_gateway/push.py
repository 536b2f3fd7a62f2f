"""A push, once its hook is validated: its ref checked as git checks it, and its one run.

Both hooks (the embedded forge's and GitLab's) end here. A push is started once: the first
hook for it records key -> run id in SECD_PUSHES (secd_shared.pushes) and writes
`push.received` under that run id; the same push sent again is answered with the run it
already started and writes nothing.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from secd_shared.bus import EventBus
from secd_shared.events import Producer, PushReceived, new_event, new_run_id, subject_for
from secd_shared.pushes import PushRegister, PushRegisterMissing, push_key
from secd_shared.refname import ref_format_problem

__all__ = ["MAX_REF_BYTES", "check_ref", "receive_push"]

log = logging.getLogger("secd.gateway")

MAX_REF_BYTES = 255
_PREFIXES = ("refs/heads/", "refs/tags/")


def check_ref(ref: str) -> None:
    """422 unless `ref` is a branch or tag that git itself would take, in ASCII, short enough.

    git's own rules come first, so no spelling of a ref (`refs/heads//secd/x`,
    `refs/heads/./secd/x`) can pass a prefix test that its plain spelling fails.
    """
    # Shown escaped: the ref is not trusted to be printable.
    shown = ascii(ref[:80])
    if len(ref) > MAX_REF_BYTES:
        raise HTTPException(422, f"ref {shown}...: longer than {MAX_REF_BYTES} characters")
    if not ref.startswith(_PREFIXES) or ref in _PREFIXES:
        raise HTTPException(422, f"ref {shown} is not a branch (refs/heads/...) or tag")
    problem = ref_format_problem(ref)
    if problem:
        raise HTTPException(422, f"ref {shown} is not a valid git ref name: {problem}")
    # git takes any UTF-8; secd takes printable ASCII, so no ref can hide look-alike or
    # invisible characters in logs and statuses.
    if not ref.isascii():
        raise HTTPException(422, f"ref {shown}: secd takes ref names in ASCII only")


async def receive_push(
    bus: EventBus, register: PushRegister, push: PushReceived, producer: Producer, *, actor: str
) -> JSONResponse:
    """202 with a new run for a push not seen before; 200 with its run for one seen before."""
    key = push_key(push.forge, push.repository, push.ref, push.before, push.after)
    ours = new_run_id()
    try:
        run_id = await register.claim(key, ours)
    except PushRegisterMissing as exc:
        log.error("%s", exc)
        raise HTTPException(503, f"secd cannot take pushes now: {exc}") from None
    if run_id != ours and await bus.last(subject_for(run_id, "push.received")) is not None:
        log.info("push already received", extra={"run_id": run_id, "project": push.repository})
        return JSONResponse(
            {
                "run_id": run_id,
                "duplicate": True,
                "detail": f"push already received as run {run_id}; not started again",
            },
            status_code=200,
        )
    # New, or recorded by a gateway that stopped before writing the event: write it now. The
    # message id is the push's, so two copies sent at once are stored once.
    event = new_event(push, run_id=run_id, producer=producer, actor=actor, project=push.repository)
    await bus.publish(event, msg_id=f"push.{key}")
    log.info("push received", extra={"run_id": run_id, "project": push.repository})
    return JSONResponse({"run_id": run_id}, status_code=202)
