"""git over HTTP(S) to a production forge (GitLab): one local mirror per project.

The verifier, the builder and the publisher each keep their own mirrors. The forge's token
reaches git only through the environment of the git process: a credential helper defined in
GIT_CONFIG_* variables prints it when git asks (after the server's 401). It is never in a URL,
an argument, a repository's config, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from secd_shared.forge import validate_repository_name

__all__ = ["ForgeGitError", "GitMirrors", "git_environment"]

TOKEN_ENV = "SECD_FORGE_GIT_TOKEN"  # noqa: S105 - the name of a variable, not a secret
_SHA = re.compile(r"[0-9a-f]{40}")
# The helper runs in git's shell; it answers only `get` and reads the token from the environment.
_HELPER = (
    '!f() { test "$1" = get || exit 0; echo username=oauth2; '
    f'printf "password=%s\\n" "${TOKEN_ENV}"; }}; f'
)


class ForgeGitError(RuntimeError):
    """git could not reach the forge or refused; the message holds no secret."""


def git_environment(base_url: str, token: str) -> dict[str, str]:
    """The environment for a git process that talks to `base_url` with `token`."""
    parts = urlsplit(base_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    env = {name: os.environ[name] for name in ("PATH", "TMPDIR") if name in os.environ}
    settings = [
        # Forget any helper a system might configure, then answer for this forge only.
        ("credential.helper", ""),
        (f"credential.{origin}.helper", _HELPER),
        ("protocol.allow", "never"),
        (f"protocol.{parts.scheme}.allow", "always"),
        ("core.hooksPath", os.devnull),
        ("core.askPass", ""),
    ]
    env.update(
        {
            "HOME": os.devnull,
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_NO_REPLACE_OBJECTS": "1",
            "GIT_CONFIG_COUNT": str(len(settings)),
            TOKEN_ENV: token,
        }
    )
    for i, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


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
        self._token = token
        self.skip_prefix = skip_prefix
        self.timeout_s = timeout_s
        self._env = git_environment(self.base_url, token)

    def url_of(self, repository: str) -> str:
        """The clone URL of a project (it holds no credentials)."""
        return f"{self.base_url}/{validate_repository_name(repository)}.git"

    def path_of(self, repository: str) -> Path:
        """Where the mirror of a project lives."""
        return self.root / f"{validate_repository_name(repository)}.git"

    def fetch(self, repository: str, want: Iterable[str] = ()) -> Path:
        """Bring the mirror up to date (every branch but secd's results, and the `want` commits)."""
        path = self.path_of(repository)
        wanted = [sha for sha in want if _SHA.fullmatch(sha)]
        with self._locked(path):
            if not (path / "HEAD").is_file():
                path.mkdir(parents=True, exist_ok=True)
                self._git(None, "init", "--quiet", "--bare", str(path))
            refspecs = ["+refs/heads/*:refs/heads/*"]
            if self.skip_prefix:
                # Results branches carry large outputs and are secd's own: never fetched back.
                refspecs.append(f"^refs/heads/{self.skip_prefix}*")
            self._git(
                path,
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                "--no-write-fetch-head",
                self.url_of(repository),
                *refspecs,
                what=f"fetch of {repository}",
            )
            missing = [sha for sha in wanted if not self._has_commit(path, sha)]
            if missing:
                # A commit no branch reaches any more (a force push since): ask for it by id.
                with contextlib.suppress(ForgeGitError):
                    self._git(
                        path,
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        "--no-write-fetch-head",
                        self.url_of(repository),
                        *missing,
                        what=f"fetch of {repository}",
                    )
        return path

    def remote_branch(self, repository: str, branch: str) -> str | None:
        """The commit a branch of the project points at on the forge, or None."""
        out = self._git(
            None,
            "ls-remote",
            "--heads",
            self.url_of(repository),
            f"refs/heads/{branch}",
            what=f"ls-remote of {repository}",
        )
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name == f"refs/heads/{branch}":
                return sha
        return None

    def push_branch(self, repository: str, branch: str, commit: str) -> None:
        """Create branch `branch` at `commit` on the forge (never forced)."""
        if not _SHA.fullmatch(commit):
            raise ForgeGitError(f"not a commit id: {commit!r}")
        path = self.path_of(repository)
        with self._locked(path):
            self._git(
                path,
                "push",
                "--quiet",
                "--no-verify",
                self.url_of(repository),
                f"{commit}:refs/heads/{branch}",
                what=f"push of {branch} to {repository}",
            )

    def _has_commit(self, path: Path, sha: str) -> bool:
        done = subprocess.run(
            ["git", "--git-dir", str(path), "cat-file", "-e", f"{sha}^{{commit}}"],
            env=self._env,
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def _git(self, path: Path | None, *args: str, what: str = "") -> str:
        argv = ["git", *(["--git-dir", str(path)] if path is not None else []), *args]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ForgeGitError(
                f"git {what or args[0]} from {self.base_url} "
                f"took longer than {self.timeout_s:.0f} s"
            ) from None
        if done.returncode != 0:
            detail = " ".join(done.stderr.decode("utf-8", "replace").split())[:500]
            raise ForgeGitError(f"git {what or args[0]} failed: {self._scrub(detail)}")
        return done.stdout.decode("utf-8", "replace")

    def _scrub(self, text: str) -> str:
        # git never prints the token; this is for the day a proxy or server echoes it back.
        return text.replace(self._token, "[token]") if self._token else text

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
