"""What secd knows about a push before it runs: the one run it starts, and who it acts for.

One push, one run. A forge may send the same push more than once (a hook retried after a
timeout, GitLab's system hook and a project hook for the same push, a replayed request): the
gateway keys every push by (forge, repository, ref, before, after) and records key -> run id in
the JetStream key-value bucket `SECD_PUSHES` before it writes `push.received`. The record is
written first and only once (the bucket's stream keeps one message per key and refuses a second,
and refuses deletes, purges and roll-ups), so a resent push, however late, finds the run it
already started; a gateway that stopped between the record and the event starts that same run
when the push is sent again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import nats.errors
import nats.js.errors

from secd_shared.bus import EventBus
from secd_shared.events import PushReceived

__all__ = [
    "PUSH_BUCKET",
    "PUSH_STREAM",
    "RESEARCHER_NAME",
    "PushRegister",
    "PushRegisterMissing",
    "UnknownPusher",
    "push_key",
    "push_subject",
    "researcher_of",
]

PUSH_BUCKET = "SECD_PUSHES"
# The stream behind the bucket, named as JetStream's key-value layer names it (`nats kv` reads it).
PUSH_STREAM = f"KV_{PUSH_BUCKET}"

# A researcher's name: it names key folders, cache folders and database accounts.
RESEARCHER_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

# JetStream's refusals of a second record for a key: "wrong last sequence" (the record's
# expected-sequence header) and "maximum messages per subject exceeded" (the stream's own rule).
_ALREADY_RECORDED = (10071, 10077)


class UnknownPusher(ValueError):
    """Whoever pushed cannot act as a researcher; the message says why and what to do."""


class PushRegisterMissing(RuntimeError):
    """The bucket SECD_PUSHES does not exist: the bootstrap has not been run since it was added."""


def push_key(forge: str, repository: str, ref: str, before: str, after: str) -> str:
    """The push's key: sha256 of the fields that say which push it is (hex)."""
    # The fields are validated before this (none holds a NUL), so NUL separates them unambiguously.
    joined = "\0".join((forge, repository, ref, before, after))
    return hashlib.sha256(joined.encode()).hexdigest()


def push_subject(key: str) -> str:
    """The subject the bucket keeps a push's record on."""
    return f"$KV.{PUSH_BUCKET}.{key}"


def researcher_of(push: PushReceived, accounts: Mapping[str, str]) -> str:
    """The researcher a push acts for; raises UnknownPusher.

    The embedded forge maps the local account that pushed through `forge.accounts`; GitLab's
    user acts as the researcher of the same name, which must be a valid researcher name. The
    gateway, the verifier and the publisher all ask this, so they never disagree.
    """
    if push.forge == "gitlab":
        if push.forge_user_id is None:
            raise UnknownPusher("the push does not name the GitLab user who pushed")
        name = push.pusher.lower()
        if not RESEARCHER_NAME.fullmatch(name):
            raise UnknownPusher(
                f"GitLab user {push.pusher!r} cannot be a researcher: secd needs a username of "
                "a-z, 0-9, '_', '.' or '-' that starts with a letter"
            )
        return name
    researcher = accounts.get(push.pusher)
    if researcher is None:
        raise UnknownPusher(
            f"the account {push.pusher!r} that pushed is not mapped to a researcher; "
            "ask the operator to add it to forge.accounts"
        )
    return researcher


class PushRegister:
    """The bucket of pushes already received: key -> run id, each written once."""

    def __init__(self, bus: EventBus) -> None:
        """Read and write the bucket over the bus's connection."""
        self.bus = bus

    async def claim(self, key: str, run_id: str) -> str:
        """The run id on record for the push `key`: `run_id` when this call recorded it."""
        subject = push_subject(key)
        try:
            # store() waits for a leader: in a cluster that lost a node, the bucket may have
            # none for a few seconds, which looks like no bucket at all.
            await self.bus.store(
                subject,
                run_id.encode(),
                headers={"Nats-Expected-Last-Subject-Sequence": "0"},
                timeout=5.0,
            )
            return run_id
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise PushRegisterMissing(
                f"the JetStream bucket {PUSH_BUCKET} does not exist (or has had no leader for "
                "seconds); run the bootstrap (`secd up`, or the deploy's bootstrap job) again "
                "to create it"
            ) from None
        except nats.js.errors.APIError as exc:
            if exc.err_code not in _ALREADY_RECORDED:
                raise
        recorded = await self.bus.last(subject, stream=PUSH_STREAM)
        if recorded is None:
            raise RuntimeError(f"{PUSH_BUCKET} refused a record for {key} but holds none")
        return recorded.decode()
