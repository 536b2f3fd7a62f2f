"""The verifier's forge port: what a push source answers and how it says "not now".

Its adapters (secd_verifier.forge.EmbeddedSource, secd_verifier.gitlab_forge.GitLabSource)
import this module only, so the factory (secd_verifier.forge.make_source) can import them
without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from secd_shared.events import PushReceived

from .signatures import KeySource

__all__ = ["ForgeUnavailable", "PushSource"]


class ForgeUnavailable(Exception):
    """The forge cannot be asked right now (network, outage, a token it refuses): retry later."""


class PushSource(Protocol):
    """Where the verifier gets a push's commits, the pusher's keys and the forge's own verdict."""

    forge: str

    def researcher_of(self, push: PushReceived) -> str:
        """The researcher the run acts for; raises UnknownPusher."""
        ...

    def project_key(self, push: PushReceived) -> str:
        """The name under which the project's verified commits are kept."""
        ...

    def mirror(self, push: PushReceived) -> Path:
        """A local repository holding every commit of the push and its history.

        Raises ForgeError (the project does not exist) or ForgeUnavailable (try again).
        """
        ...

    def pusher_keys(self, push: PushReceived, researcher: str) -> KeySource:
        """The keys registered to the pusher (and, where the forge knows, who holds other keys)."""
        ...

    def forge_check(self, push: PushReceived) -> Callable[[str], str | None] | None:
        """The forge's own signature verification of a commit as a reason to reject, or None
        when the forge has none. The function may raise ForgeUnavailable."""
        ...
