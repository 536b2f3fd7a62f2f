"""push.received -> push.verified | run.rejected.

Every commit that needs checking (the push's new commits, and any commit reachable from the
pushed head that was never verified) must carry a signature by one of the *pusher's* keys.
One bad commit rejects the whole push, with a reason naming it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config
from secd_shared.events import PushReceived, PushVerified, RunRejected
from secd_shared.forge import ForgeError, repository_path
from secd_shared.worker import Emit, PermanentError
from secd_verifier.commits import commits_to_verify
from secd_verifier.keyring import Keyring
from secd_verifier.signatures import verify_push
from secd_verifier.verified import VerifiedCommits

__all__ = ["Verifier", "setup"]

log = logging.getLogger("secd.verifier")


class Verifier:
    """Checks pushes against the keyring; remembers what it has verified."""

    def __init__(self, config: Config) -> None:
        self.forge_root = config.path(config.forge.root)
        self.accounts = config.forge.accounts
        self.results_prefix = f"refs/heads/{config.forge.results_prefix}"
        self.keyring = Keyring(config.path(config.verifier.keyring))
        self.verified = VerifiedCommits(config.path("verifier/verified"))

    async def on_push(self, stored: StoredEvent) -> list[Emit]:
        """Verify one push; the outcome names the researcher the run will act for."""
        push = stored.event.payload
        assert isinstance(push, PushReceived)
        if push.ref.startswith(self.results_prefix):
            # secd's own results never start a run, whoever pushed them.
            log.info("ignoring results branch %s", push.ref)
            return []
        researcher = self.accounts.get(push.pusher)

        def reject(reason: str, commit: str | None = None) -> list[Emit]:
            return [
                Emit(
                    RunRejected(
                        repository=push.repository,
                        ref=push.ref,
                        head=push.after,
                        reason=reason,
                        commit=commit,
                    ),
                    actor=researcher,
                )
            ]

        if researcher is None:
            return reject(
                f"the account {push.pusher!r} that pushed is not mapped to a researcher; "
                "ask the operator to add it to forge.accounts"
            )
        try:
            repo = repository_path(self.forge_root, push.repository)
        except ForgeError as exc:
            raise PermanentError(str(exc)) from None
        return await asyncio.to_thread(self._verify, repo, push, researcher, reject)

    def _verify(self, repo: Path, push: PushReceived, researcher: str, reject) -> list[Emit]:
        try:
            commits = commits_to_verify(
                repo, push.before, push.after, self.verified.load(push.repository), ref=push.ref
            )
        except ValueError as exc:
            return reject(str(exc))
        verdicts = verify_push(repo, commits, researcher, self.keyring)
        for verdict in verdicts:
            if not verdict.ok:
                return reject(verdict.reason, verdict.commit)
        self.verified.add(push.repository, commits)
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


async def setup(config: Config, _bus: EventBus):
    """The verifier's one consumer."""
    verifier = Verifier(config)

    return {"verifier": verifier.on_push}
