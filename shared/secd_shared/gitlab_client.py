"""The one door to GitLab's API: every python-gitlab client secd uses is made here.

The verifier (keys, GitLab's signature verdict), the publisher (commit statuses) and the
credentials service (a user's Keycloak identity) all ask GitLab with secd's API token, so they get
the same client: forge.gitlab's URL and timeout, certificates verified, transient errors (429,
5xx) retried with python-gitlab's back-off, follow-up pages kept on our URL, and a user agent that
names secd in the instance's logs. git itself reaches GitLab through secd_shared.git.

python-gitlab is imported only when a client is made: only the services that talk to GitLab
install it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from secd_shared.config import Config, read_secret

if TYPE_CHECKING:
    import gitlab

__all__ = ["gitlab_client", "gitlab_token", "user_agent"]


def gitlab_token(config: Config) -> str:
    """secd's GitLab token (forge.gitlab.token, from the environment or token_file)."""
    settings = config.forge.gitlab
    return read_secret(config, "forge.gitlab.token", settings.token, settings.token_file)


def user_agent(service: str | None = None) -> str:
    """`secd/<version>` (with the service's name), as GitLab's logs will show it."""
    try:
        release = version("secd-shared")
    except PackageNotFoundError:
        release = "unknown"
    return f"secd/{release}" + (f" ({service})" if service else "")


def gitlab_client(
    config: Config, *, service: str | None = None, ssl_verify: bool | str = True
) -> gitlab.Gitlab:
    """A python-gitlab client for forge.gitlab; `ssl_verify` may name a CA bundle instead."""
    import gitlab

    settings = config.forge.gitlab
    return gitlab.Gitlab(
        settings.url,
        private_token=gitlab_token(config),
        timeout=settings.timeout_s,
        ssl_verify=ssl_verify,
        retry_transient_errors=True,
        # Follow-up pages use our URL, not one the server builds (a proxy may rewrite it).
        keep_base_url=True,
        user_agent=user_agent(service),
    )
