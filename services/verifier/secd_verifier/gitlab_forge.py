"""The GitLab adapter of the verifier's forge port (python-gitlab for the API, git for commits).

- commits: fetched from the project into a mirror kept by the verifier, never taken from the
  hook body (system hooks list none, push hooks at most 20);
- keys: the pusher's registered GPG keys (`GET /users/:id/gpg_keys`);
- GitLab's own verification (`GET /projects/:id/repository/commits/:sha/signature`) must say
  `verified` too, but only after secd's check passed: GitLab ties a key to the committer's
  e-mail, not to the pusher.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import gitlab
import gitlab.exceptions
import requests

from secd_shared.config import Config
from secd_shared.events import PushReceived
from secd_shared.forge_git import ForgeGitError, GitMirrors
from secd_shared.gitlab_client import gitlab_client, gitlab_token
from secd_shared.pushes import researcher_of

from .commits import ZERO
from .forge_port import ForgeUnavailable

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pgpy

__all__ = ["GitLabKeys", "GitLabSource"]

log = logging.getLogger("secd.verifier.gitlab")


def _unavailable(what: str, exc: Exception) -> ForgeUnavailable:
    if isinstance(exc, gitlab.exceptions.GitlabError):
        detail = f"{exc.response_code}: {exc.error_message}"
    else:
        detail = type(exc).__name__
    return ForgeUnavailable(f"GitLab did not answer {what} ({detail}); retrying")


class GitLabKeys:
    """The GPG keys GitLab has registered to one user, fetched once."""

    def __init__(self, client: gitlab.Gitlab, user_id: int, researcher: str) -> None:
        """Keys of GitLab user `user_id`, who acts as `researcher`."""
        self.client = client
        self.user_id = user_id
        self.researcher = researcher
        self._keys: list[pgpy.PGPKey] | None = None

    def keys_of(self, researcher: str) -> list[pgpy.PGPKey]:
        """The pusher's keys; any other researcher has none here (only the pusher's count)."""
        if researcher != self.researcher:
            return []
        if self._keys is None:
            try:
                listed = self.client.users.get(self.user_id, lazy=True).gpgkeys.list(get_all=True)
            except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
                raise _unavailable(f"for the GPG keys of user {self.user_id}", exc) from None
            keys = []
            for entry in listed:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        key, _ = pgpy.PGPKey.from_blob(entry.key)
                except Exception as exc:  # pgpy raises anything on a malformed key
                    log.warning(
                        "GPG key %s of user %s is unreadable (%s)",
                        entry.id,
                        self.user_id,
                        type(exc).__name__,
                    )
                    continue
                keys.append(key.pubkey if not key.is_public else key)
            self._keys = keys
        return list(self._keys)

    def owner_of(self, key_id: str) -> str | None:
        """GitLab does not say who else holds a key; the reason then says 'not registered'."""
        return None


class GitLabSource:
    """Pushes to a GitLab instance (see the module docstring)."""

    forge = "gitlab"

    def __init__(self, client: gitlab.Gitlab, mirrors: GitMirrors) -> None:
        """Ask GitLab through `client`; keep commits in `mirrors`."""
        self.client = client
        self.mirrors = mirrors

    @classmethod
    def from_config(cls, config: Config) -> GitLabSource:
        """The adapter for forge.gitlab, mirrors under <state_dir>/verifier/mirrors."""
        mirrors = GitMirrors(
            config.path("verifier/mirrors"),
            config.forge.gitlab.url,
            gitlab_token(config),
            skip_prefix=config.forge.results_prefix,
        )
        return cls(gitlab_client(config, service="verifier"), mirrors)

    def researcher_of(self, push: PushReceived) -> str:
        """The GitLab username, as the researcher's name (GitLab usernames ignore case)."""
        return researcher_of(push, {})

    def project_key(self, push: PushReceived) -> str:
        """The project id: a path can be renamed and reused by another project."""
        if push.forge_project_id is None:
            return push.repository
        return f"gitlab-project-{push.forge_project_id}"

    def mirror(self, push: PushReceived) -> Path:
        """Fetch the project into its mirror, asking for the pushed commits by id as well."""
        want = [sha for sha in (push.after, push.before) if sha != ZERO]
        try:
            return self.mirrors.fetch(push.repository, want)
        except ForgeGitError as exc:
            raise ForgeUnavailable(str(exc)) from None

    def pusher_keys(self, push: PushReceived, researcher: str) -> GitLabKeys:
        """The keys GitLab has registered to the pushing user."""
        assert push.forge_user_id is not None
        return GitLabKeys(self.client, push.forge_user_id, researcher)

    def forge_check(self, push: PushReceived) -> Callable[[str], str | None]:
        """GitLab's signature status of a commit must be `verified`."""
        project = self.client.projects.get(push.forge_project_id or push.repository, lazy=True)

        def check(sha: str) -> str | None:
            """Why GitLab's verification of `sha` rejects it, or None."""
            short = sha[:7]
            try:
                answer = project.commits.get(sha, lazy=True).signature()
            except gitlab.exceptions.GitlabGetError as exc:
                if exc.response_code == 404:
                    return f"commit {short}: GitLab finds no signature on it"
                raise _unavailable(f"for the signature of {short}", exc) from None
            except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
                raise _unavailable(f"for the signature of {short}", exc) from None
            # python-gitlab hands back a Response instead of the parsed JSON only for a streamed
            # request or a non-JSON answer, which this API call never gets.
            assert isinstance(answer, dict)
            status = str(answer.get("verification_status", "unknown"))
            if status != "verified":
                return (
                    f"commit {short}: GitLab shows its signature as {status!r}, not 'verified'; "
                    "commit with an e-mail address of your GitLab account that your key holds"
                )
            return None

        return check
