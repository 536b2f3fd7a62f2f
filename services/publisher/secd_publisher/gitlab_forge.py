"""The GitLab adapter of the publisher's forge port.

Results: the pushed head is fetched into a mirror kept by the publisher, the results commit is
made there with git plumbing, and the branch is created on GitLab with `git push` (so large and
binary outputs travel as git objects, not API requests). Statuses: `POST
/projects/:id/statuses/:sha`; GitLab answers 400 "Cannot transition status" when a state is
repeated, which is what a redelivered event does, so that answer is not an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gitlab
import gitlab.exceptions
import requests
from gitlab.v4.objects import ProjectCommit

from secd_shared.config import Config
from secd_shared.events import PushReceived
from secd_shared.forge_git import ForgeGitError, GitMirrors
from secd_shared.git import Repository
from secd_shared.gitlab_client import gitlab_client, gitlab_token
from secd_shared.safepath import Beneath

from .branch import PublishError, extend_branch, publish_branch
from .forge_port import CommitStatus, ForgeUnavailable

__all__ = ["GitLabResults"]

log = logging.getLogger("secd.publisher.gitlab")

MAX_DESCRIPTION = 255


class GitLabResults:
    """Results branches and commit statuses on a GitLab instance."""

    forge = "gitlab"

    def __init__(self, client: gitlab.Gitlab, mirrors: GitMirrors, status_name: str) -> None:
        """API calls through `client`, git through `mirrors`; statuses named `status_name`."""
        self.client = client
        self.mirrors = mirrors
        self.status_name = status_name

    @classmethod
    def from_config(cls, config: Config) -> GitLabResults:
        """The adapter for forge.gitlab, mirrors under <state_dir>/publisher/mirrors."""
        settings = config.forge.gitlab
        client = gitlab_client(config, service="publisher")
        mirrors = GitMirrors(
            config.path("publisher/mirrors"),
            settings.url,
            gitlab_token(config),
            skip_prefix=config.forge.results_prefix,
        )
        return cls(client, mirrors, settings.status_name)

    def publish(
        self,
        push: PushReceived,
        branch: str,
        files: dict[str, Path | Beneath | bytes],
        message: str,
        author: tuple[str, str],
    ) -> str:
        """Push branch `branch` (made on the pushed head) to the project, once."""
        try:
            existing = self.mirrors.remote_branch(push.repository, branch)
            if existing is not None:
                return existing
            repo = self.mirrors.fetch(push.repository, [push.after])
            commit = publish_branch(repo, branch, push.after, files, message, author=author)
            try:
                self.mirrors.push_branch(push.repository, branch, commit)
            except ForgeGitError:
                # Another publisher may have pushed it first; then that one is the result.
                winner = self.mirrors.remote_branch(push.repository, branch)
                if winner is None:
                    raise
                return winner
            return commit
        except ForgeGitError as exc:
            raise ForgeUnavailable(str(exc)) from None

    def extend(
        self,
        push: PushReceived,
        branch: str,
        files: dict[str, Path | Beneath | bytes],
        message: str,
        author: tuple[str, str],
    ) -> str:
        """Push a child of the results branch's head with `files` added (a fast-forward)."""
        try:
            head = self.mirrors.remote_branch(push.repository, branch)
            if head is None:
                raise PublishError(f"branch {branch} is not on the forge yet")
            repo = self.mirrors.fetch(push.repository, [head])
            Repository(repo, error=PublishError).run(
                "update-ref", "--end-of-options", f"refs/heads/{branch}", head
            )
            commit = extend_branch(repo, branch, files, message, author=author)
            if commit != head:
                self.mirrors.push_branch(push.repository, branch, commit)
            return commit
        except ForgeGitError as exc:
            raise ForgeUnavailable(str(exc)) from None

    def _commit(self, push: PushReceived) -> ProjectCommit:
        project = self.client.projects.get(push.forge_project_id or push.repository, lazy=True)
        return project.commits.get(push.after, lazy=True)

    def set_status(self, push: PushReceived, status: CommitStatus) -> None:
        """POST the status; a repeated state (GitLab's 400 'Cannot transition') is a no-op."""
        description = " ".join(status.description.split())
        if len(description) > MAX_DESCRIPTION:
            description = description[: MAX_DESCRIPTION - 1] + "…"
        try:
            self._commit(push).statuses.create(
                {
                    "state": status.state,
                    "name": self.status_name,
                    "description": description,
                    "ref": push.ref.removeprefix("refs/heads/"),
                }
            )
        except gitlab.exceptions.GitlabCreateError as exc:
            if exc.response_code == 400 and "Cannot transition status" in str(exc.error_message):
                log.debug("status of %s is %s already", push.after[:7], status.state)
                return
            raise ForgeUnavailable(
                f"GitLab refused the commit status ({exc.response_code}: {exc.error_message})"
            ) from None
        except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
            raise ForgeUnavailable(
                f"GitLab did not take the commit status ({type(exc).__name__})"
            ) from None

    def status_of(self, push: PushReceived) -> CommitStatus | None:
        """The newest status of our name on the pushed head."""
        try:
            listed = self._commit(push).statuses.list(name=self.status_name, get_all=True)
        except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
            raise ForgeUnavailable(
                f"GitLab did not list the statuses ({type(exc).__name__})"
            ) from None
        ours = [s for s in listed if s.name == self.status_name]
        if not ours:
            return None
        latest = max(ours, key=lambda s: s.id)
        return CommitStatus(state=latest.status, description=latest.description or "")
