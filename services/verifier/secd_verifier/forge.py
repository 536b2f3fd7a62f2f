"""The forge as the verifier sees it: where a push's commits are, whose they are, and what the
forge itself says about a commit's signature.

The port (PushSource, ForgeUnavailable) lives in secd_verifier.forge_port and is listed here too.
Two adapters, one contract (tests/contracts/test_forge.py): the embedded forge (bare repositories
on this machine, keys in a keyring folder) and GitLab (secd_verifier.gitlab_forge).
"""

from __future__ import annotations

from pathlib import Path

from secd_shared.config import Config
from secd_shared.events import PushReceived
from secd_shared.forge import repository_path
from secd_shared.pushes import UnknownPusher, researcher_of

from .forge_port import ForgeUnavailable, PushSource
from .keyring import Keyring
from .signatures import KeySource

__all__ = ["EmbeddedSource", "ForgeUnavailable", "PushSource", "UnknownPusher", "make_source"]


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
