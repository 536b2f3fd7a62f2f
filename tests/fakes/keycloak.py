"""FakeKeycloak: answers like Keycloak's admin REST API for what secd uses.

A confidential client gets a token with the client-credentials grant
(`POST /realms/{realm}/protocol/openid-connect/token`) and reads users
(`GET /admin/realms/{realm}/users[/{id}]`) and their groups (`.../users/{id}/groups`), with
Keycloak's paging (`first`, `max`). Nothing else is implemented.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass, field

from tests.fakes.server import FakeHTTPServer, Reply, Request

__all__ = ["FakeKeycloak", "KeycloakUser"]


@dataclass
class KeycloakUser:
    """A realm user and the paths of the groups they are a direct member of."""

    id: str
    username: str
    groups: list[str] = field(default_factory=list)


class FakeKeycloak(FakeHTTPServer):
    """One realm, one confidential client, users with groups."""

    def __init__(self, realm: str = "research", client_id: str = "secd") -> None:
        """A realm with a client whose secret is made up here."""
        super().__init__()
        self.realm = realm
        self.client_id = client_id
        self.client_secret = secrets.token_urlsafe(24)
        self.users: dict[str, KeycloakUser] = {}
        self._tokens: set[str] = set()

    def add_user(self, username: str, groups: list[str]) -> KeycloakUser:
        """A user (with a fresh id) in the given groups, e.g. ["/secd/mysql-t-read"]."""
        user = KeycloakUser(str(uuid.uuid4()), username, list(groups))
        self.users[user.id] = user
        return user

    def handle(self, request: Request) -> Reply:
        """Route token and admin requests."""
        parts = [p for p in request.path.split("/") if p]
        if request.method == "POST" and parts == [
            "realms",
            self.realm,
            "protocol",
            "openid-connect",
            "token",
        ]:
            return self._token(request)
        if parts[:3] != ["admin", "realms", self.realm]:
            return Reply.json(404, {"error": "Realm does not exist"})
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._tokens:
            return Reply.json(401, {"error": "HTTP 401 Unauthorized"})
        match parts[3:]:
            case ["users"]:
                return self._page(request, self._find(request))
            case ["users", user_id]:
                user = self.users.get(user_id)
                if user is None:
                    return Reply.json(404, {"error": "User not found"})
                return Reply.json(200, self._user_json(user))
            case ["users", user_id, "groups"]:
                user = self.users.get(user_id)
                if user is None:
                    return Reply.json(404, {"error": "User not found"})
                groups = [
                    {
                        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, path)),
                        "name": path.rsplit("/", 1)[-1],
                        "path": path,
                    }
                    for path in user.groups
                ]
                return self._page(request, groups)
        return Reply.json(404, {"error": "Not found"})

    def _token(self, request: Request) -> Reply:
        form = request.json()
        if form.get("grant_type") != "client_credentials":
            return Reply.json(400, {"error": "unsupported_grant_type"})
        given = form.get("client_secret", "")
        if form.get("client_id") != self.client_id or not hmac.compare_digest(
            given.encode(), self.client_secret.encode()
        ):
            return Reply.json(
                401,
                {
                    "error": "unauthorized_client",
                    "error_description": "Invalid client or Invalid client credentials",
                },
            )
        token = secrets.token_urlsafe(32)
        self._tokens.add(token)
        return Reply.json(
            200,
            {
                "access_token": token,
                "expires_in": 300,
                "refresh_expires_in": 0,
                "token_type": "Bearer",
                "not-before-policy": 0,
                "scope": "profile email",
            },
        )

    def _find(self, request: Request) -> list[dict]:
        username = request.arg("username")
        exact = request.arg("exact") == "true"
        found = []
        for user in self.users.values():
            if username is None:
                found.append(user)
            elif exact and user.username.lower() == username.lower():
                found.append(user)
            elif not exact and username.lower() in user.username.lower():
                found.append(user)
        return [self._user_json(u) for u in found]

    def _page(self, request: Request, items: list) -> Reply:
        first = int(request.arg("first", "0") or 0)
        size = int(request.arg("max", "100") or 100)
        return Reply.json(200, items[first : first + size])

    def _user_json(self, user: KeycloakUser) -> dict:
        return {"id": user.id, "username": user.username, "enabled": True, "emailVerified": True}
