"""DbKind: the kinds of database, their facts, and the events that carry one."""

from __future__ import annotations

import msgspec
import pytest

from secd_shared.dbkind import DB_KINDS, GROUP_PREFIXES, db_kind, default_port, facts
from secd_shared.events import DatabaseAddress


def test_the_kinds_and_their_facts() -> None:
    assert DB_KINDS == ("postgres", "mysql", "neo4j")
    assert [default_port(kind) for kind in DB_KINDS] == [5432, 3306, 7687]
    assert [facts(kind).display_name for kind in DB_KINDS] == [
        "PostgreSQL",
        "MariaDB/MySQL",
        "Neo4j",
    ]
    assert GROUP_PREFIXES == {
        "postgres": "postgres",
        "mysql": "mysql",
        "mariadb": "mysql",
        "neo4j": "neo4j",
    }
    assert facts("neo4j").uri_schemes[0] == "bolt" and facts("postgres").uri_schemes == ()


@pytest.mark.parametrize("name", ["mariadb", "oracle", "", "Postgres", None, 5432])
def test_anything_else_is_not_a_kind(name: object) -> None:
    with pytest.raises(ValueError, match="unknown database kind"):
        db_kind(name)


def test_an_address_keeps_its_wire_format_and_refuses_unknown_kinds() -> None:
    address = DatabaseAddress(kind="mysql", database="d", socket="/run/m.sock")
    wire = msgspec.json.encode(address)
    assert wire == b'{"kind":"mysql","database":"d","host":null,"port":null,"socket":"/run/m.sock"}'
    assert msgspec.json.decode(wire, type=DatabaseAddress) == address
    with pytest.raises(msgspec.ValidationError, match="kind"):
        msgspec.json.decode(wire.replace(b'"mysql"', b'"oracle"'), type=DatabaseAddress)
