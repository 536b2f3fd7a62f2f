"""push.received -> push.verified | run.rejected.

Every commit that needs checking (the push's new commits, and any commit reachable from the
pushed head that was never verified) must carry a signature by one of the *pusher's* keys,
under secd's strict rules, and, where the forge verifies signatures itself (GitLab), the forge
must call it verified too. One bad commit rejects the whole push, with a reason naming it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config, ConfigError
from secd_shared.events import PushReceived, PushVerified, RunRejected
from secd_shared.forge import ForgeError
from secd_shared.service import Handlers
from secd_shared.worker import Emit, TransientError
from secd_verifier.commits import commits_to_verify
from secd_verifier.forge import ForgeUnavailable, PushSource, UnknownPusher, make_source
from secd_verifier.signatures import verify_push
from secd_verifier.verified import VerifiedCommits

__all__ = ["Verifier", "setup"]

log = logging.getLogger("secd.verifier")


class _Reject(Protocol):
    """on_push's `reject`: the run.rejected to emit for a push it cannot take."""

    def __call__(
        self, reason: str, commit: str | None = None, *, unknown_pusher: bool = False
    ) -> list[Emit]: ...


class Verifier:
    """Checks pushes against the pusher's keys; remembers what it has verified."""

    def __init__(self, config: Config, source: PushSource | None = None) -> None:
        """The forge adapter forge.kind names, unless one is given."""
        self.source = source if source is not None else make_source(config)
        self.results_prefix = f"refs/heads/{config.forge.results_prefix}"
        self.verified = VerifiedCommits(config.path("verifier/verified"))

    async def on_push(self, stored: StoredEvent) -> list[Emit]:
        """Verify one push; the outcome names the researcher the run will act for."""
        push = stored.event.payload
        assert isinstance(push, PushReceived)
        if push.ref.startswith(self.results_prefix):
            # secd's own results never start a run, whoever pushed them.
            log.info("ignoring results branch %s", push.ref)
            return []
        researcher: str | None = None

        def reject(
            reason: str, commit: str | None = None, *, unknown_pusher: bool = False
        ) -> list[Emit]:
            return [
                Emit(
                    RunRejected(
                        repository=push.repository,
                        ref=push.ref,
                        head=push.after,
                        reason=reason,
                        commit=commit,
                        unknown_pusher=unknown_pusher,
                    ),
                    actor=researcher,
                )
            ]

        # The verifier may write only push.verified and run.rejected: a push it cannot take is
        # rejected with the reason, so the researcher sees it.
        if push.forge != self.source.forge:
            return reject(
                f"the push came from forge {push.forge!r}, but this verifier serves "
                f"forge.kind = {self.source.forge!r}; ask the operator"
            )
        try:
            researcher = self.source.researcher_of(push)
        except UnknownPusher as exc:
            # Whoever this is, secd must not write on their behalf into the repository they
            # named (it may be another researcher's): the publisher writes nothing for this.
            return reject(str(exc), unknown_pusher=True)
        return await asyncio.to_thread(self._verify, push, researcher, reject)

    def _verify(self, push: PushReceived, researcher: str, reject: _Reject) -> list[Emit]:
        try:
            repo = self.source.mirror(push)
        except ForgeError as exc:
            return reject(str(exc))
        except ForgeUnavailable as exc:
            raise TransientError(str(exc)) from None
        project = self.source.project_key(push)
        try:
            commits = commits_to_verify(
                repo, push.before, push.after, self.verified.load(project), ref=push.ref
            )
        except ValueError as exc:
            return reject(str(exc))
        try:
            verdicts = verify_push(
                repo,
                commits,
                researcher,
                self.source.pusher_keys(push, researcher),
                forge_check=self.source.forge_check(push),
            )
        except ForgeUnavailable as exc:
            raise TransientError(str(exc)) from None
        for verdict in verdicts:
            if not verdict.ok:
                return reject(verdict.reason, verdict.commit)
        self.verified.add(project, commits)
        return [
            Emit(
                PushVerified(
                    repository=push.repository,
                    ref=push.ref,
                    head=push.after,
                    commits=commits,
                    researcher=researcher,
                    keys=sorted({v.fingerprint for v in verdicts if v.fingerprint}),
                ),
                actor=researcher,
            )
        ]


async def setup(config: Config, _bus: EventBus) -> Handlers:
    """The verifier's one consumer."""
    try:
        verifier = Verifier(config)
    except ConfigError as exc:
        raise SystemExit(f"secd-verifier: {exc}") from None
    return {"verifier": verifier.on_push}
