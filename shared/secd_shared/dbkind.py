"""The kinds of sensitive database secd issues accounts on, and the facts that go with each kind.

A kind names a wire protocol and an account model, not a product: "mysql" covers MariaDB and
MySQL alike. Every other module asks this one rather than listing the kinds itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "DB_KINDS",
    "GROUP_PREFIXES",
    "DbKind",
    "DbKindFacts",
    "db_kind",
    "default_port",
    "facts",
]

DbKind = Literal["postgres", "mysql", "neo4j"]
DB_KINDS: tuple[DbKind, ...] = get_args(DbKind)


@dataclass(frozen=True, slots=True)
class DbKindFacts:
    """What secd knows about one kind of database without asking a server."""

    kind: DbKind
    # How people and error messages name it.
    display_name: str
    # Where its server listens unless told otherwise.
    default_port: int
    # The administrator secd connects as unless told otherwise.
    default_admin: str
    # The `<prefix>` of grant groups `<prefix>-<table>-read` that mean this kind.
    group_prefixes: tuple[str, ...]
    # URI schemes an operator may give (only kinds configured by URI have any).
    uri_schemes: tuple[str, ...] = ()
    # Where a run's neighbour-replay account reads its views: True, in a database named after
    # the account (the replay job's DB_NAME); False, in the run's database (PostgreSQL: the
    # account's search_path).
    replay_own_database: bool = False


_FACTS: dict[DbKind, DbKindFacts] = {
    "postgres": DbKindFacts(
        kind="postgres",
        display_name="PostgreSQL",
        default_port=5432,
        default_admin="postgres",
        group_prefixes=("postgres",),
    ),
    "mysql": DbKindFacts(
        kind="mysql",
        display_name="MariaDB/MySQL",
        default_port=3306,
        default_admin="root",
        group_prefixes=("mysql", "mariadb"),
        # MariaDB has no search_path: unqualified names resolve in the connection's database.
        replay_own_database=True,
    ),
    "neo4j": DbKindFacts(
        kind="neo4j",
        display_name="Neo4j",
        default_port=7687,
        default_admin="neo4j",
        # For neo4j the "table" of a group is a node label.
        group_prefixes=("neo4j",),
        uri_schemes=("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"),
    ),
}

# Group prefixes as they appear in group names, mapped to the kind that serves them.
GROUP_PREFIXES: dict[str, DbKind] = {
    prefix: kind for kind, entry in _FACTS.items() for prefix in entry.group_prefixes
}


def db_kind(name: object) -> DbKind:
    """`name` as a DbKind; ValueError naming the kinds when it is not one."""
    if isinstance(name, str) and name in _FACTS:
        return name
    raise ValueError(f"unknown database kind {name!r} (one of {', '.join(DB_KINDS)})")


def facts(kind: DbKind) -> DbKindFacts:
    """The facts of one kind; ValueError for anything that is not a DbKind."""
    return _FACTS[db_kind(kind)]


def default_port(kind: DbKind) -> int:
    """The port a server of `kind` listens on by default."""
    return facts(kind).default_port
