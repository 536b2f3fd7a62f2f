"""Grant groups: `<backend>-<table>-read` names from the identity provider, parsed strictly.

A group name comes from outside secd, so it is checked against a narrow ASCII pattern before any
part of it is used. Everything else about a table (does it exist, where) is the backend's job.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from secd_shared.dbkind import GROUP_PREFIXES, DbKind
from secd_shared.events import Refusal

__all__ = [
    "BACKENDS",
    "NOT_A_GRANT_GROUP",
    "TABLE_PATTERN",
    "GroupGrant",
    "canonical_backend",
    "grants_for",
    "parse_group",
    "table_problem",
]

# Backend names as they appear in group names, mapped to the kind that serves them
# ("mariadb" -> "mysql"). For neo4j the "table" of a group is a node label, checked by the same
# rules.
BACKENDS: dict[str, DbKind] = GROUP_PREFIXES
TABLE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_TABLE_LENGTH = 64
NOT_A_GRANT_GROUP = "not a secd grant group (<backend>-<table>-read)"

_SUFFIX = "-read"


@dataclass(frozen=True, slots=True)
class GroupGrant:
    """A valid grant group: read access to one table on one kind of backend."""

    group: str
    backend: DbKind
    table: str


def canonical_backend(name: str) -> DbKind:
    """The backend kind for a backend name ("mariadb" -> "mysql"); ValueError if unknown."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})") from None


def _describe_char(char: str) -> str:
    # Reasons reach researchers and logs; invisible or look-alike characters are named, not shown.
    name = unicodedata.name(char, "unnamed character")
    return f"U+{ord(char):04X} ({name})"


def table_problem(table: object) -> str | None:
    """Why `table` is not an acceptable table name, or None when it is."""
    if not isinstance(table, str):
        return f"table name must be text, not {type(table).__name__}"
    if table == "":
        return "empty table name"
    for char in table:
        if not char.isascii():
            return f"table name contains non-ASCII character {_describe_char(char)}"
    if len(table) > MAX_TABLE_LENGTH:
        return f"table name is {len(table)} characters long; at most {MAX_TABLE_LENGTH} allowed"
    for char in table:
        if not (char.isalnum() or char == "_"):
            shown = repr(char) if char.isprintable() and char != " " else _describe_char(char)
            return f"table name contains {shown}; only letters, digits and _ are allowed"
    if table[0].isdigit():
        return "table name must start with a letter or _"
    # The loops above cover every way to fail the pattern; this keeps the two from drifting apart.
    if TABLE_PATTERN.fullmatch(table) is None:
        return "table name does not match [A-Za-z_][A-Za-z0-9_]{0,63}"
    return None


def parse_group(name: str) -> GroupGrant | Refusal:
    """Parse one group name into a grant, or a Refusal saying what is wrong with it."""
    if not isinstance(name, str):
        return Refusal(name=repr(name), reason=NOT_A_GRANT_GROUP)
    prefix, sep, _ = name.partition("-")
    if not sep or prefix not in BACKENDS or not name.endswith(_SUFFIX):
        return Refusal(name=name, reason=NOT_A_GRANT_GROUP)
    table = name[len(prefix) + 1 : len(name) - len(_SUFFIX)] if len(name) > len(prefix) + 5 else ""
    problem = table_problem(table)
    if problem is not None:
        return Refusal(name=name, reason=problem)
    return GroupGrant(group=name, backend=BACKENDS[prefix], table=table)


def grants_for(groups: list[str], backend: str) -> tuple[list[str], list[Refusal]]:
    """The tables `groups` grant on `backend` (in order, once each), and every group refused."""
    kind = canonical_backend(backend)
    tables: list[str] = []
    refused: list[Refusal] = []
    for group in groups:
        parsed = parse_group(group)
        if isinstance(parsed, Refusal):
            refused.append(parsed)
        elif parsed.backend != kind:
            reason = f"group for backend {parsed.backend}; this run uses {kind}"
            refused.append(Refusal(name=group, reason=reason))
        elif parsed.table not in tables:
            tables.append(parsed.table)
    return tables, refused
