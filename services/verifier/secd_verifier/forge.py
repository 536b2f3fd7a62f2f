"""The forge as the verifier sees it: where a push's commits are, whose they are, and what the
forge itself says about a commit's signature.

Two adapters, one contract (tests/forge): the embedded forge (bare repositories on this machine,
keys in a keyring folder) and GitLab (secd_verifier.gitlab_forge).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from secd_shared.config import Config
from secd_shared.events import PushReceived
from secd_shared.forge import repository_path
from secd_shared.pushes import UnknownPusher, researcher_of

from .keyring import Keyring
from .signatures import KeySource

__all__ = ["EmbeddedSource", "ForgeUnavailable", "PushSource", "UnknownPusher", "make_source"]


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


class EmbeddedSource:
    """The embedded forge: bare repositories under forge.root, keys under verifier.keyring."""

    forge = "git"

    def __init__(self, config: Config) -> None:
        """Read repositories, accounts and keys from the configuration's paths."""
        self.root = config.path(config.forge.root)
        self.accounts = config.forge.accounts
        self.keyring = Keyring(config.path(config.verifier.keyring))

    def researcher_of(self, push: PushReceived) -> str:
        """The researcher forge.accounts maps the pushing local account to."""
        return researcher_of(push, self.accounts)

    def project_key(self, push: PushReceived) -> str:
        """The repository's name."""
        return push.repository

    def mirror(self, push: PushReceived) -> Path:
        """The bare repository itself: the push is already in it."""
        return repository_path(self.root, push.repository)

    def pusher_keys(self, push: PushReceived, researcher: str) -> KeySource:
        """The keyring folder (it knows every researcher's keys)."""
        return self.keyring

    def forge_check(self, push: PushReceived) -> None:
        """The embedded forge has no signature verification of its own."""
        return None


def make_source(config: Config) -> PushSource:
    """The adapter forge.kind names."""
    if config.forge.kind == "gitlab":
        from .gitlab_forge import GitLabSource

        return GitLabSource.from_config(config)
    return EmbeddedSource(config)
