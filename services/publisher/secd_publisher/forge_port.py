"""The publisher's forge port: what a results forge does and how it says "not now".

Its adapters (secd_publisher.forge.EmbeddedResults, secd_publisher.gitlab_forge.GitLabResults)
import this module only, so the factory (secd_publisher.forge.make_results_forge) can import
them without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from secd_shared.events import PushReceived
from secd_shared.safepath import Beneath

__all__ = ["STATES", "CommitStatus", "ForgeUnavailable", "ResultsForge"]

# The states a commit status moves through, as GitLab names them.
STATES = ("pending", "running", "success", "failed")


class ForgeUnavailable(Exception):
    """The forge cannot be reached or refused for now: retry later."""


@dataclass(frozen=True)
class CommitStatus:
    """A run's progress as the forge shows it on the pushed commit: a state and one line."""

    state: str
    description: str


class ResultsForge(Protocol):
    """Where the publisher writes results and commit statuses."""

    forge: str

    def publish(
        self,
        push: PushReceived,
        branch: str,
        files: dict[str, Path | Beneath | bytes],
        message: str,
        author: tuple[str, str],
    ) -> str:
        """Create branch `branch` on top of the pushed head; returns its commit. Safe to repeat:
        a branch that already exists is returned as it is. Raises PublishError, ForgeUnavailable."""
        ...

    def extend(
        self,
        push: PushReceived,
        branch: str,
        files: dict[str, Path | Beneath | bytes],
        message: str,
        author: tuple[str, str],
    ) -> str:
        """Add `files` to the existing branch `branch` as a new commit (files released later);
        returns its head. Safe to repeat: files already there unchanged add nothing.
        Raises PublishError, ForgeUnavailable."""
        ...

    def set_status(self, push: PushReceived, status: CommitStatus) -> None:
        """Set the pushed head's status. Repeating a state is not an error (the forge may keep
        the first description, as GitLab does). Raises ForgeUnavailable."""
        ...

    def status_of(self, push: PushReceived) -> CommitStatus | None:
        """The pushed head's current status, or None if it has none."""
        ...
