"""The embedded identity adapter: researcher -> groups, from a TOML file the operator edits.

[researchers]
alice = ["postgres-patients-read"]
"""

from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = ["FileIdentity", "IdentityError"]


class IdentityError(Exception):
    """The groups file is missing or malformed; the message says where."""


class FileIdentity:
    """Reads the groups file, re-reading it when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._groups: dict[str, list[str]] = {}

    def groups_of(self, researcher: str) -> list[str]:
        """The researcher's groups; an unknown researcher has none."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            raise IdentityError(f"groups file {self.path} does not exist") from None
        if mtime != self._mtime:
            self._groups = self._load()
            self._mtime = mtime
        return list(self._groups.get(researcher, []))

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
