"""Neighbour replay on a real MariaDB: the replay account reads each granted table less a few
rows, through views in a database of its own name, and nothing of it is left after revoke."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pymysql
import pytest
import pytest_asyncio

from secd_credentials.accounts import new_password, replay_account_name
from secd_credentials.backends import MariaDBBackend, ReplayBackend
from secd_credentials.backends.mariadb import hidden_database
from secd_shared.events import new_run_id

from .conftest import DbEnv, my_admin, my_connect_as, my_query

AGES = 20  # rows of table ages (one-column primary key)
VISITS = 10  # rows of table visits (no primary key: whole rows are matched)
HIDE = 3
ER_DBACCESS_DENIED = 1044
ER_TABLEACCESS_DENIED = 1142
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_VIEW_NO_EXPLAIN = 1345
# Hostile, yet valid, names: a reserved word for a table, a key column and other columns that
# would end a quoted identifier or a statement if they were pasted unquoted.
ODD_TABLE = "select"
ODD_KEY = "id`) OR 1=1 --x"
ODD_COLUMNS = ("a b", "c`d", "e;DROP DATABASE x")


@pytest_asyncio.fixture(scope="module")
async def tables(my_env: DbEnv) -> None:
    """More tables in the module's database: with a primary key, without one, with odd names."""
    admin = await my_admin()
    try:
        await my_query(admin, f"USE `{my_env.database}`")
        await my_query(admin, "CREATE TABLE ages (id int PRIMARY KEY, age int NOT NULL)")
        await my_query(admin, "INSERT INTO ages SELECT seq, 20 + seq FROM seq_1_to_20")
        # NULLs too: a row whose ward is NULL must still be matched when it is left out.
        await my_query(admin, "CREATE TABLE visits (ward varchar(10), days int)")
        await my_query(
            admin, "INSERT INTO visits SELECT IF(seq % 3 = 0, NULL, seq), seq FROM seq_1_to_10"
        )
        key = "`" + ODD_KEY.replace("`", "``") + "`"
        await my_query(admin, f"CREATE TABLE `{ODD_TABLE}` ({key} int PRIMARY KEY, v int)")
        await my_query(admin, f"INSERT INTO `{ODD_TABLE}` SELECT seq, seq FROM seq_1_to_8")  # noqa: S608
        columns = ", ".join("`" + c.replace("`", "``") + "` int" for c in ODD_COLUMNS)
        await my_query(admin, f"CREATE TABLE odd_rows ({columns})")
        await my_query(admin, "INSERT INTO odd_rows SELECT seq, NULL, seq FROM seq_1_to_8")
    finally:
        admin.close()


def replay_account(my_env: DbEnv) -> str:
    name = replay_account_name(new_run_id())
    my_env.accounts.append(name)
    return name


async def databases(account: str) -> list[str]:
    admin = await my_admin()
    try:
        rows = await my_query(
            admin,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (%s, %s)",
            (account, hidden_database(account)),
        )
        return sorted(r[0] for r in rows)
    finally:
        admin.close()


async def hidden_keys(account: str, table: str) -> list[int]:
    admin = await my_admin()
    try:
        rows = await my_query(admin, f"SELECT `key` FROM `{hidden_database(account)}`.`{table}`")  # noqa: S608
        return sorted(r[0] for r in rows)
    finally:
        admin.close()


@pytest_asyncio.fixture
async def replay(
    tables: None, my_env: DbEnv, my_backend: MariaDBBackend
) -> AsyncIterator[tuple[str, str]]:
    account, password = replay_account(my_env), new_password()
    result = await my_backend.issue_replay(
        account,
        password,
        ["ages", "visits", "nosuch", "x`y"],
        hide_rows=HIDE,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        statement_timeout_s=30,
    )
    assert result.granted == ["ages", "visits"]
    assert [r.name for r in result.refused] == ["x`y", "nosuch"]
    yield account, password
    await my_backend.revoke(account)


def test_mariadb_is_a_replay_backend(my_backend: MariaDBBackend) -> None:
    # The credentials service replays a run only on a backend that is one.
    assert isinstance(my_backend, ReplayBackend)


async def test_replay_account_sees_all_rows_but_a_few(
    replay: tuple[str, str], my_env: DbEnv
) -> None:
    account, password = replay
    left_out = await hidden_keys(account, "ages")
    assert len(left_out) == HIDE
    # The job's DB_NAME is the account's own database: unqualified names are the views.
    conn = await my_connect_as(account, password, account)
    try:
        assert await my_query(conn, "SELECT count(*), count(DISTINCT id) FROM ages") == [
            (AGES - HIDE, AGES - HIDE)
        ]
        seen = {r[0] for r in await my_query(conn, "SELECT id FROM ages")}
        assert seen == set(range(1, AGES + 1)) - set(left_out)
        assert await my_query(conn, "SELECT count(*) FROM visits") == [(VISITS - HIDE,)]
        for sql in (
            f"SELECT count(*) FROM `{my_env.database}`.ages",  # noqa: S608
            f"SELECT count(*) FROM `{my_env.database}`.patients",  # noqa: S608
            f"SELECT count(*) FROM `{hidden_database(account)}`.ages",  # noqa: S608
        ):
            with pytest.raises(pymysql.err.OperationalError) as denied:
                await my_query(conn, sql)
            assert denied.value.args[0] == ER_TABLEACCESS_DENIED, sql
        # A condition of the account's own is never evaluated on a left-out row: a merged view
        # would run this assignment over all 20 rows.
        await my_query(conn, "SET @seen = ''")
        await my_query(
            conn, "SELECT count(*) FROM ages WHERE (@seen := CONCAT(@seen, id, ',')) <> ''"
        )
        ((trace,),) = await my_query(conn, "SELECT @seen")
        assert {int(x) for x in trace.split(",") if x} == seen
        # The definition, which names the hidden table and no key, is not the account's to read.
        for sql in ("SHOW CREATE VIEW ages", "EXPLAIN SELECT * FROM ages"):
            with pytest.raises(pymysql.err.OperationalError) as denied:
                await my_query(conn, sql)
            assert denied.value.args[0] in (ER_TABLEACCESS_DENIED, ER_VIEW_NO_EXPLAIN), sql
        assert await my_query(
            conn,
            "SELECT VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s",
            (account,),
        ) == [("",), ("",)]
        # Nothing but the views: neither database is visible, nor writable.
        shown = {r[0] for r in await my_query(conn, "SHOW DATABASES")}
        assert shown == {"information_schema", account}
        with pytest.raises(pymysql.err.OperationalError) as denied:
            await my_query(conn, "CREATE TABLE mine (id int)")
        assert denied.value.args[0] in (ER_DBACCESS_DENIED, ER_TABLEACCESS_DENIED)
    finally:
        conn.close()


async def test_replay_account_cannot_use_the_run_database(
    replay: tuple[str, str], my_env: DbEnv
) -> None:
    account, password = replay
    with pytest.raises(pymysql.err.OperationalError) as denied:
        await my_connect_as(account, password, my_env.database)
    assert denied.value.args[0] == ER_DBACCESS_DENIED


async def test_rows_left_out_of_a_table_without_a_primary_key_are_whole_rows(
    replay: tuple[str, str],
) -> None:
    account, password = replay
    admin = await my_admin()
    try:
        left_out = await my_query(
            admin,
            f"SELECT ward, days FROM `{hidden_database(account)}`.visits",  # noqa: S608
        )
    finally:
        admin.close()
    assert len(left_out) == HIDE
    conn = await my_connect_as(account, password, account)
    try:
        seen = set(await my_query(conn, "SELECT ward, days FROM visits"))
    finally:
        conn.close()
    every = {(None if i % 3 == 0 else str(i), i) for i in range(1, VISITS + 1)}
    assert seen == every - set(left_out)


async def test_each_replay_leaves_out_its_own_rows(
    tables: None, my_env: DbEnv, my_backend: MariaDBBackend
) -> None:
    # Chosen at random per account: 5 issues all hiding the same 3 of 20 is a 1 in 10^9 event.
    hidden: set[tuple[int, ...]] = set()
    for _ in range(5):
        account = replay_account(my_env)
        await my_backend.issue_replay(
            account,
            new_password(),
            ["ages"],
            hide_rows=HIDE,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        hidden.add(tuple(await hidden_keys(account, "ages")))
        await my_backend.revoke(account)
    assert all(len(keys) == HIDE for keys in hidden)
    assert len(hidden) > 1


async def test_a_second_issue_chooses_afresh_and_keeps_only_the_views(
    tables: None, my_env: DbEnv, my_backend: MariaDBBackend
) -> None:
    account, password = replay_account(my_env), new_password()
    for tables_asked in (["ages", "visits"], ["ages"]):
        result = await my_backend.issue_replay(
            account,
            password,
            tables_asked,
            hide_rows=2,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
        assert result.granted == tables_asked
    conn = await my_connect_as(account, password, account)
    try:
        assert await my_query(conn, "SELECT count(*) FROM ages") == [(AGES - 2,)]
        assert [r[0] for r in await my_query(conn, "SHOW TABLES")] == ["ages"]
    finally:
        conn.close()
    await my_backend.revoke(account)


async def test_hostile_names_are_quoted(
    tables: None, my_env: DbEnv, my_backend: MariaDBBackend
) -> None:
    account, password = replay_account(my_env), new_password()
    result = await my_backend.issue_replay(
        account,
        password,
        [ODD_TABLE, "odd_rows"],
        hide_rows=2,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    assert result.granted == [ODD_TABLE, "odd_rows"]
    conn = await my_connect_as(account, password, account)
    try:
        assert await my_query(conn, f"SELECT count(*) FROM `{ODD_TABLE}`") == [(6,)]  # noqa: S608
        assert await my_query(conn, "SELECT count(*), count(`c``d`) FROM odd_rows") == [(6, 0)]
    finally:
        conn.close()
    await my_backend.revoke(account)
    assert await databases(account) == []


async def test_revoke_drops_the_account_and_both_databases(
    tables: None, my_env: DbEnv, my_backend: MariaDBBackend
) -> None:
    account, password = replay_account(my_env), new_password()
    await my_backend.issue_replay(
        account,
        password,
        ["ages"],
        hide_rows=1,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    assert await databases(account) == sorted([account, hidden_database(account)])
    assert account in await my_backend.accounts()
    conn = await my_connect_as(account, password, account)
    await my_backend.revoke(account)
    with pytest.raises((pymysql.err.OperationalError, pymysql.err.InterfaceError)):
        await my_query(conn, "SELECT count(*) FROM ages")
    conn.close()
    assert await databases(account) == []
    assert account not in await my_backend.accounts()
    admin = await my_admin()
    try:
        assert await my_query(admin, "SELECT 1 FROM mysql.user WHERE User = %s", (account,)) == []
        assert (
            await my_query(admin, "SELECT 1 FROM mysql.tables_priv WHERE User = %s", (account,))
            == []
        )
    finally:
        admin.close()
    await my_backend.revoke(account)  # a second revoke finds nothing and is no error


@pytest.mark.parametrize("left", ["views", "hidden"])
async def test_a_database_left_without_its_account_is_listed_and_dropped(
    my_env: DbEnv, my_backend: MariaDBBackend, left: str
) -> None:
    account = replay_account(my_env)
    name = account if left == "views" else hidden_database(account)
    admin = await my_admin()
    try:
        await my_query(admin, f"CREATE DATABASE `{name}`")
    finally:
        admin.close()
    assert account in await my_backend.accounts()
    await my_backend.revoke(account)
    assert await databases(account) == []
    assert account not in await my_backend.accounts()


async def test_replay_needs_a_replay_account_name_and_a_row_count(
    my_env: DbEnv, my_backend: MariaDBBackend
) -> None:
    with pytest.raises(ValueError, match="not a replay account"):
        await my_backend.issue_replay(
            my_env.new_account(),
            new_password(),
            ["patients"],
            hide_rows=1,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )
    for rows in (0, True, 10_001):
        with pytest.raises(ValueError, match="hide_rows"):
            await my_backend.issue_replay(
                replay_account(my_env),
                new_password(),
                ["patients"],
                hide_rows=rows,
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
