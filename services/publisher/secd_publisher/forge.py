"""The forge as the publisher sees it: results go back as a branch, progress as a commit status.

Two adapters, one contract (tests/forge): the embedded forge (branches written straight into the
bare repository, statuses kept as git notes under refs/notes/secd) and GitLab
(secd_publisher.gitlab_forge: `git push` of the branch, GitLab's commit statuses).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from secd_shared.config import Config
from secd_shared.events import PushReceived
from secd_shared.forge import repository_path
from secd_shared.safepath import Beneath

from .branch import PublishError, publish_branch

__all__ = [
    "STATES",
    "CommitStatus",
    "EmbeddedResults",
    "ForgeUnavailable",
    "ResultsForge",
    "make_results_forge",
]

# The states a commit status moves through, as GitLab names them.
STATES = ("pending", "running", "success", "failed")
NOTES_REF = "refs/notes/secd"


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

    def set_status(self, push: PushReceived, status: CommitStatus) -> None:
        """Set the pushed head's status. Repeating a state is not an error (the forge may keep
        the first description, as GitLab does). Raises ForgeUnavailable."""
        ...

    def status_of(self, push: PushReceived) -> CommitStatus | None:
        """The pushed head's current status, or None if it has none."""
        ...


class EmbeddedResults:
    """Results branches and statuses in the embedded forge's bare repositories."""

    forge = "git"

    def __init__(self, config: Config) -> None:
        """Repositories under forge.root."""
        self.root = config.path(config.forge.root)
        self.author = (config.publisher.author_name, config.publisher.author_email)

    def publish(self, push, branch, files, message, author) -> str:
        """Write the branch with git plumbing into the bare repository."""
        repo = repository_path(self.root, push.repository)
        return publish_branch(repo, branch, push.after, files, message, author=author)

    def set_status(self, push: PushReceived, status: CommitStatus) -> None:
        """Keep the status as a git note on the commit (`git log --notes=secd` shows it)."""
        repo = repository_path(self.root, push.repository)
        text = json.dumps({"state": status.state, "description": status.description})
        with _locked(repo):
            self._git(
                repo,
                "notes",
                "--ref",
                NOTES_REF,
                "add",
                "-f",
                "-F",
                "-",
                push.after,
                input=text.encode() + b"\n",
            )

    def status_of(self, push: PushReceived) -> CommitStatus | None:
        """The note on the pushed head, if any."""
        repo = repository_path(self.root, push.repository)
        done = self._git(repo, "notes", "--ref", NOTES_REF, "show", push.after, check=False)
        if done.returncode != 0:
            return None
        data = json.loads(done.stdout)
        return CommitStatus(state=data["state"], description=data["description"])

    def _git(
        self, repo: Path, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        name, email = self.author
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=email,
        )
        done = subprocess.run(
            ["git", "--git-dir", str(repo), "-c", "core.hooksPath=/dev/null", *args],
            input=input,
            capture_output=True,
            env=env,
            check=False,
        )
        if check and done.returncode != 0:
            detail = " ".join(done.stderr.decode("utf-8", "replace").split())
            raise PublishError(f"git {args[0]} failed in {repo}: {detail}")
        return done


@contextlib.contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """One notes writer per repository: `git notes` does not merge concurrent updates."""
    fd = os.open(repo / "secd-notes.lock", os.O_WRONLY | os.O_CREAT, 0o600)
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
