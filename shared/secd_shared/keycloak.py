"""The production identity adapter: GitLab user -> identity extern_uid -> Keycloak user -> groups.

The researcher's name is their GitLab username. GitLab keeps, for users who sign in through
Keycloak, an identity whose `extern_uid` is the Keycloak user's id (the OIDC `sub`) or name;
`GET /users/:id` shows it to administrators. The Keycloak admin API then lists the user's
groups; only groups under `identity.keycloak.group_root` count, and the grant is a group's last
path segment (`/secd/mysql-super_secret_dataset-read` -> `mysql-super_secret_dataset-read`).

A researcher without such an identity, without a Keycloak user, or without matching groups
fails the run with that reason (NoIdentity); GitLab or Keycloak being unreachable is an
IdentityError, retried.
"""

from __future__ import annotations

import logging

import gitlab
import gitlab.exceptions
import requests
from keycloak import KeycloakAdmin
from keycloak.exceptions import KeycloakError, KeycloakGetError

from secd_shared.config import Config, KeycloakConfig, read_secret
from secd_shared.gitlab_client import gitlab_client
from secd_shared.identity_port import IdentityError, NoIdentity

__all__ = ["KeycloakIdentity"]

log = logging.getLogger("secd.credentials.keycloak")


def _under(path: str, root: str) -> str | None:
    """The group's name (last segment) if `path` lies under `root`, else None."""
    root = "/" + root.strip("/")
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name:
        return None
    if root == "/" or parent == root or parent.startswith(root + "/"):
        return name
    return None


class KeycloakIdentity:
    """Groups of a researcher from Keycloak, found through their GitLab identity."""

    def __init__(
        self,
        gitlab_client: gitlab.Gitlab,
        keycloak: KeycloakAdmin,
        settings: KeycloakConfig,
        officer_group: str = "secd-officers",
    ) -> None:
        """Ask GitLab for identities, Keycloak for users and groups."""
        self.gitlab = gitlab_client
        self.keycloak = keycloak
        self.settings = settings
        self.officer_group = officer_group

    @classmethod
    def from_config(cls, config: Config) -> KeycloakIdentity:
        """The adapter for identity.keycloak, with forge.gitlab's API token."""
        settings = config.identity.keycloak
        secret = read_secret(
            config,
            "identity.keycloak.client_secret",
            settings.client_secret,
            settings.client_secret_file,
        )
        client = gitlab_client(config, service="credentials")
        admin = KeycloakAdmin(
            server_url=settings.url.rstrip("/") + "/",
            realm_name=settings.realm,
            user_realm_name=settings.client_realm or settings.realm,
            client_id=settings.client_id,
            client_secret_key=secret,
            timeout=int(settings.timeout_s),
            verify=True,
        )
        return cls(client, admin, settings, officer_group=config.identity.officer_group)

    def groups_of(self, researcher: str) -> list[str]:
        """The researcher's grant groups; NoIdentity if there are none, IdentityError if unsure."""
        names = self._groups_under_root(researcher)
        root = self.settings.group_root
        if not names:
            raise NoIdentity(
                f"{researcher} is in no Keycloak group under {root!r} of realm "
                f"{self.settings.realm!r}; ask your project administrator for access"
            )
        return names

    def is_officer(self, person: str) -> bool:
        """Whether `person` is in the officers' group under group_root (e.g.
        /secd/secd-officers); a group of that name elsewhere in the realm does not count."""
        try:
            return self.officer_group in self._groups_under_root(person)
        except NoIdentity:
            return False

    def _groups_under_root(self, person: str) -> list[str]:
        """The last segments of `person`'s groups under group_root, in Keycloak's order."""
        extern_uid = self._extern_uid(person)
        user_id = self._keycloak_user(person, extern_uid)
        try:
            groups = self.keycloak.get_user_groups(user_id, brief_representation=True)
        except KeycloakError as exc:
            raise self._down("the user's groups", exc) from None
        root = self.settings.group_root
        return [name for g in groups if (name := _under(str(g.get("path", "")), root))]

    def _extern_uid(self, researcher: str) -> str:
        try:
            found = self.gitlab.users.list(username=researcher, get_all=True)
            user = next((u for u in found if u.username.lower() == researcher.lower()), None)
            details = self.gitlab.users.get(user.id) if user is not None else None
        except (gitlab.exceptions.GitlabError, requests.RequestException) as exc:
            code = getattr(exc, "response_code", None) or type(exc).__name__
            raise IdentityError(f"GitLab did not answer for user {researcher} ({code})") from None
        if details is None:
            raise NoIdentity(f"{researcher} is not a GitLab user")
        provider = self.settings.gitlab_provider
        for identity in getattr(details, "identities", None) or []:
            if identity.get("provider") == provider and identity.get("extern_uid"):
                return str(identity["extern_uid"])
        raise NoIdentity(
            f"{researcher} has no Keycloak identity in GitLab (provider {provider!r}); "
            "sign in to GitLab through Keycloak once, or ask the administrator to link it"
        )

    def _keycloak_user(self, researcher: str, extern_uid: str) -> str:
        try:
            if self.settings.extern_uid == "id":
                return str(self.keycloak.get_user(extern_uid)["id"])
            found = self.keycloak.get_users({"username": extern_uid, "exact": True})
        except KeycloakGetError as exc:
            if exc.response_code == 404:
                raise NoIdentity(self._missing(researcher)) from None
            raise self._down("the user", exc) from None
        except KeycloakError as exc:
            raise self._down("the user", exc) from None
        wanted = extern_uid.lower()
        match = next((u for u in found if str(u.get("username", "")).lower() == wanted), None)
        if match is None:
            raise NoIdentity(self._missing(researcher))
        return str(match["id"])

    def _missing(self, researcher: str) -> str:
        return (
            f"{researcher}'s Keycloak identity does not exist in realm {self.settings.realm!r}; "
            "ask the administrator"
        )

    def _down(self, what: str, exc: KeycloakError) -> IdentityError:
        code = getattr(exc, "response_code", None) or type(exc).__name__
        return IdentityError(f"Keycloak did not answer for {what} ({code}); retrying")
