"""Identities (researcher -> groups): the factory and the embedded adapter, a TOML file the
operator edits. The production adapter is Keycloak (keycloak.py); both pass one contract
(tests/contracts/test_identity.py). The port (Identity, IdentityError, NoIdentity) lives in
identity_port.py and is listed here too.

[researchers]
alice = ["postgres-patients-read"]
officer-1 = ["secd-officers"]   # a security officer: a member of identity.officer_group
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from secd_shared.identity_port import Identity, IdentityError, NoIdentity

if TYPE_CHECKING:
    from secd_shared.config import Config

__all__ = ["FileIdentity", "Identity", "IdentityError", "NoIdentity", "make_identity"]


class FileIdentity:
    """Reads the groups file, re-reading it when it changes."""

    def __init__(self, path: Path, officer_group: str = "secd-officers") -> None:
        self.path = path
        self.officer_group = officer_group
        self._mtime: float | None = None
        self._groups: dict[str, list[str]] = {}

    def groups_of(self, researcher: str) -> list[str]:
        """The researcher's groups; NoIdentity for a researcher the file has no groups for."""
        groups = self._table().get(researcher)
        if groups is None:
            raise NoIdentity(
                f"{researcher} is not in the groups file (identity.groups_file); ask the operator"
            )
        if not groups:
            raise NoIdentity(f"{researcher} has no groups in the groups file; ask the operator")
        return list(groups)

    def is_officer(self, person: str) -> bool:
        """Whether the file lists `person` in the officers' group (identity.officer_group)."""
        return self.officer_group in self._table().get(person, [])

    def _table(self) -> dict[str, list[str]]:
        """The file's [researchers] table, re-read when the file changed."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            raise IdentityError(f"groups file {self.path} does not exist") from None
        if mtime != self._mtime:
            self._groups = self._load()
            self._mtime = mtime
        return self._groups

    def _load(self) -> dict[str, list[str]]:
        try:
            data = tomllib.loads(self.path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise IdentityError(f"groups file {self.path} is not valid TOML: {exc}") from None
        table = data.get("researchers", {})
        if not isinstance(table, dict) or not all(
            isinstance(v, list) and all(isinstance(g, str) for g in v) for v in table.values()
        ):
            raise IdentityError(
                f"groups file {self.path}: [researchers] must map names to lists of group names"
            )
        return table


def make_identity(config: Config) -> Identity:
    """The adapter identity.kind names."""
    if config.identity.kind == "keycloak":
        from secd_shared.keycloak import KeycloakIdentity

        return KeycloakIdentity.from_config(config)
    return FileIdentity(
        config.path(config.identity.groups_file), officer_group=config.identity.officer_group
    )
