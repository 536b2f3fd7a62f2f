"""git over HTTP(S) to a production forge (GitLab): one local mirror per project.

The verifier, the builder and the publisher each keep their own mirrors. git runs through
secd_shared.git (the one door): the forge's token reaches git only through the environment of
the git process, as a credential helper that prints it when the server asks (after its 401). It
is never in a URL, an argument, a repository's config, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from secd_shared.forge import validate_repository_name
from secd_shared.git import Remote, Repository
from secd_shared.git import git_environment as _door_environment

__all__ = ["ForgeGitError", "GitMirrors", "git_environment"]

_SHA = re.compile(r"[0-9a-f]{40}")


class ForgeGitError(RuntimeError):
    """git could not reach the forge or refused; the message holds no secret."""


def git_environment(base_url: str, token: str) -> dict[str, str]:
    """The environment for a git process that talks to `base_url` with `token`."""
    return _door_environment(Remote(base_url.rstrip("/"), token))


class GitMirrors:
    """Bare mirrors of a forge's projects under `root`, fetched and pushed over HTTP(S)."""

    def __init__(
        self,
        root: Path,
        base_url: str,
        token: str,
        *,
        skip_prefix: str | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        """Mirrors under root of the forge at base_url; branches under skip_prefix are not fetched."""  # noqa: E501
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")
        self.skip_prefix = skip_prefix
        self.timeout_s = timeout_s
        self._remote = Remote(self.base_url, token)

    def url_of(self, repository: str) -> str:
        """The clone URL of a project (it holds no credentials)."""
        return f"{self.base_url}/{validate_repository_name(repository)}.git"

    def path_of(self, repository: str) -> Path:
        """Where the mirror of a project lives."""
        return self.root / f"{validate_repository_name(repository)}.git"

    def _repository(self, path: Path | None) -> Repository:
        return Repository(path, remote=self._remote, timeout_s=self.timeout_s, error=ForgeGitError)

    def fetch(self, repository: str, want: Iterable[str] = ()) -> Path:
        """Bring the mirror up to date (every branch but secd's results, and the `want` commits)."""
        path = self.path_of(repository)
        wanted = [sha for sha in want if _SHA.fullmatch(sha)]
        what = f"fetch of {repository}"
        with self._locked(path):
            git = Repository.init_bare(
                path, remote=self._remote, timeout_s=self.timeout_s, error=ForgeGitError
            )
            refspecs = ["+refs/heads/*:refs/heads/*"]
            if self.skip_prefix:
                # Results branches carry large outputs and are secd's own: never fetched back.
                refspecs.append(f"^refs/heads/{self.skip_prefix}*")
            git.fetch(self.url_of(repository), refspecs, prune=True, what=what)
            missing = [sha for sha in wanted if not git.has_commit(sha)]
            if missing:
                # A commit no branch reaches any more (a force push since): ask for it by id.
                with contextlib.suppress(ForgeGitError):
                    git.fetch(self.url_of(repository), missing, what=what)
        return path

    def remote_branch(self, repository: str, branch: str) -> str | None:
        """The commit a branch of the project points at on the forge, or None."""
        return self._repository(None).ls_remote_heads(
            self.url_of(repository), f"refs/heads/{branch}", what=f"ls-remote of {repository}"
        )

    def push_branch(self, repository: str, branch: str, commit: str) -> None:
        """Create branch `branch` at `commit` on the forge (never forced)."""
        if not _SHA.fullmatch(commit):
            raise ForgeGitError(f"not a commit id: {commit!r}")
        path = self.path_of(repository)
        with self._locked(path):
            self._repository(path).push(
                self.url_of(repository),
                f"{commit}:refs/heads/{branch}",
                what=f"push of {branch} to {repository}",
            )

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """One git writer per mirror across threads and processes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
