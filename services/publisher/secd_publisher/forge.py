"""The forge as the publisher sees it: results go back as a branch, progress as a commit status.

The port (ResultsForge, CommitStatus, ForgeUnavailable) lives in secd_publisher.forge_port and
is listed here too. Two adapters, one contract (tests/forge): the embedded forge (branches
written straight into the bare repository, statuses kept as git notes under refs/notes/secd)
and GitLab (secd_publisher.gitlab_forge: `git push` of the branch, GitLab's commit statuses).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from secd_shared.config import Config
from secd_shared.events import PushReceived
from secd_shared.forge import repository_path
from secd_shared.git import Repository
from secd_shared.safepath import Beneath

from .branch import PublishError, extend_branch, publish_branch
from .forge_port import STATES, CommitStatus, ForgeUnavailable, ResultsForge

__all__ = [
    "STATES",
    "CommitStatus",
    "EmbeddedResults",
    "ForgeUnavailable",
    "ResultsForge",
    "make_results_forge",
]

NOTES_REF = "refs/notes/secd"


class EmbeddedResults:
    """Results branches and statuses in the embedded forge's bare repositories."""

    forge = "git"

    def __init__(self, config: Config) -> None:
        """Repositories under forge.root."""
        self.root = config.path(config.forge.root)
        self.author = (config.publisher.author_name, config.publisher.author_email)

    def publish(
        self,
        push: PushReceived,
        branch: str,
        files: dict[str, Path | Beneath | bytes],
        message: str,
        author: tuple[str, str],
    ) -> str:
        """Write the branch with git plumbing into the bare repository."""
        repo = repository_path(self.root, push.repository)
        return publish_branch(repo, branch, push.after, files, message, author=author)

    def extend(
        self,
        push: PushReceived,
        branch: str,
        files: dict[str, Path | Beneath | bytes],
        message: str,
        author: tuple[str, str],
    ) -> str:
        """Add a commit to the results branch in the bare repository."""
        repo = repository_path(self.root, push.repository)
        with _locked(repo, "secd-results.lock"):
            return extend_branch(repo, branch, files, message, author=author)

    def set_status(self, push: PushReceived, status: CommitStatus) -> None:
        """Keep the status as a git note on the commit (`git log --notes=secd` shows it)."""
        repo = repository_path(self.root, push.repository)
        text = json.dumps({"state": status.state, "description": status.description})
        with _locked(repo):
            Repository(repo, error=PublishError).add_note(
                NOTES_REF, push.after, text + "\n", identity=self.author
            )

    def status_of(self, push: PushReceived) -> CommitStatus | None:
        """The note on the pushed head, if any."""
        repo = repository_path(self.root, push.repository)
        note = Repository(repo, error=PublishError).note(NOTES_REF, push.after)
        if note is None:
            return None
        data = json.loads(note)
        return CommitStatus(state=data["state"], description=data["description"])


@contextlib.contextmanager
def _locked(repo: Path, name: str = "secd-notes.lock") -> Iterator[None]:
    """One writer per repository of notes (`git notes` does not merge concurrent updates), or
    of results branches' later commits."""
    fd = os.open(repo / name, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def make_results_forge(config: Config) -> ResultsForge:
    """The adapter forge.kind names."""
    if config.forge.kind == "gitlab":
        from .gitlab_forge import GitLabResults

        return GitLabResults.from_config(config)
    return EmbeddedResults(config)
