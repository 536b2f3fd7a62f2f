"""The identity port: where a researcher's groups come from, who is a security officer, and how
a source says it cannot answer.

Its adapters (secd_shared.identity.FileIdentity, secd_shared.keycloak.KeycloakIdentity)
import this module only, so the factory (secd_shared.identity.make_identity) can import them
without a cycle.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Identity", "IdentityError", "NoIdentity"]


class IdentityError(Exception):
    """The identity source cannot answer now (file missing or malformed, server down): retry."""


class NoIdentity(IdentityError):
    """The researcher has no identity or no groups there: the run fails with this reason."""


class Identity(Protocol):
    """Where a researcher's groups come from, and who holds the security officers' role."""

    def groups_of(self, researcher: str) -> list[str]:
        """The researcher's group names; NoIdentity if they have none, IdentityError if unsure."""
        ...

    def is_officer(self, person: str) -> bool:
        """Whether `person` is in the officers' group (identity.officer_group); False for
        someone the source does not know, IdentityError if the source cannot answer now."""
        ...
