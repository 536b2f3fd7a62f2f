"""How long issuing and revoking a run's database account takes, on each backend.

Against this machine's real servers: MariaDB over its Unix socket (as root) and PostgreSQL on
127.0.0.1:5432 (as postgres). Each backend gets its own fresh database (two tables, a few rows)
and is warmed up first: its admin pool is open and its one-time hardening has run (one issue and
revoke, not counted). Then --cycles times, with a fresh run's account name and password:

- issue: `backend.issue(account, password, ["patients", "nosuch"], ...)`, the call the
  credentials service makes (existence check, account, limits, grant, and on PostgreSQL the
  check of the account's effective privileges), until it returns;
- one live session: the account connects and reads its table (not timed);
- revoke: `backend.revoke(account)` until it returns: lock, end that session, drop.

The baseline, measured in the same process on the same admin pool, is one `SELECT 1` round trip;
ratios are against its median. After each revoke the session is checked to be gone. The
databases and any leftover account are removed at the end. The last line holds the medians in
milliseconds: `mariadb_issue_ms=.. mariadb_revoke_ms=.. postgres_issue_ms=.. postgres_revoke_ms=..`
Goal (measured, not asserted): each under 50 ms.

    .venv/bin/python bench/credentials.py [--cycles 30]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiomysql
import asyncpg
import pymysql

from secd_credentials.accounts import account_name, new_password
from secd_credentials.backends import (
    MariaDBBackend,
    MariaDBSettings,
    PostgresBackend,
    PostgresSettings,
)
from secd_shared.events import new_run_id

MY_SOCKET = "/run/mysqld/mysqld.sock"
PG_HOST, PG_PORT = "127.0.0.1", 5432
TABLES = ["patients", "nosuch"]


def _ms(seconds: list[float]) -> dict[str, float]:
    """Median, 90th percentile, min and max in milliseconds."""
    values = sorted(s * 1000 for s in seconds)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return {"median": statistics.median(values), "p90": p90, "min": values[0], "max": values[-1]}


def _report(name: str, what: str, seconds: list[float], baseline_ms: float) -> float:
    """Print one line of figures; return the median in ms."""
    s = _ms(seconds)
    print(
        f"{name:8s} {what:7s} median {s['median']:6.1f} ms  p90 {s['p90']:6.1f} ms"
        f"  min {s['min']:6.1f}  max {s['max']:6.1f}  ({s['median'] / baseline_ms:.0f}x baseline)"
    )
    return s["median"]


CREATED: list[str] = []


async def _revoke_all(backend: MariaDBBackend | PostgresBackend) -> None:
    """Revoke every account this run made on `backend` (a no-op for those already gone)."""
    for account in CREATED:
        await backend.revoke(account)


async def _cycles(
    name: str,
    backend: MariaDBBackend | PostgresBackend,
    session: Callable[[str, str], Awaitable[Callable[[], Awaitable[bool]]]],
    baseline: Callable[[], Awaitable[None]],
    cycles: int,
) -> tuple[float, float]:
    """Warm up, measure the baseline, then issue/session/revoke `cycles` times."""
    expires = datetime.now(UTC) + timedelta(hours=1)
    warm = account_name(new_run_id())
    CREATED.append(warm)
    await backend.issue(warm, new_password(), TABLES, expires_at=expires)
    await backend.revoke(warm)
    rounds = []
    for _ in range(max(cycles, 30)):
        started = time.perf_counter()
        await baseline()
        rounds.append(time.perf_counter() - started)
    baseline_ms = _ms(rounds)["median"]
    issue_s, revoke_s = [], []
    for _ in range(cycles):
        account, password = account_name(new_run_id()), new_password()
        CREATED.append(account)
        started = time.perf_counter()
        result = await backend.issue(
            account,
            password,
            TABLES,
            expires_at=expires,
            max_connections=4,
            statement_timeout_s=3600,
        )
        issue_s.append(time.perf_counter() - started)
        assert result.granted == ["patients"], result
        alive = await session(account, password)
        started = time.perf_counter()
        await backend.revoke(account)
        revoke_s.append(time.perf_counter() - started)
        if await alive():
            raise SystemExit(f"{name}: the session of {account} outlived its revocation")
    print(f"{name:8s} baseline median {baseline_ms:6.2f} ms (SELECT 1 on the admin pool)")
    issue_ms = _report(name, "issue", issue_s, baseline_ms)
    revoke_ms = _report(name, "revoke", revoke_s, baseline_ms)
    return issue_ms, revoke_ms


async def bench_mariadb(cycles: int) -> tuple[float, float]:
    """MariaDB over its socket, in a database of its own."""
    database = f"secdbench_{secrets.token_hex(4)}"
    admin = await aiomysql.connect(unix_socket=MY_SOCKET, user="root", autocommit=True)
    backend = MariaDBBackend(
        MariaDBSettings(database=database, host="localhost", user="root", socket=MY_SOCKET)
    )
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{database}`")
            await cur.execute(f"CREATE TABLE `{database}`.patients (id int, name varchar(20))")
            await cur.execute(f"CREATE TABLE `{database}`.secrets (id int)")
            await cur.execute(f"INSERT INTO `{database}`.patients VALUES (1, 'a'), (2, 'b')")  # noqa: S608

        async def session(account: str, password: str) -> Callable[[], Awaitable[bool]]:
            conn = await aiomysql.connect(
                unix_socket=MY_SOCKET, user=account, password=password, db=database
            )
            async with conn.cursor() as cur:
                await cur.execute("SELECT count(*) FROM patients")

            async def alive() -> bool:
                try:
                    async with conn.cursor() as cur:
                        await cur.execute("SELECT 1")
                    return True
                except (pymysql.MySQLError, OSError):
                    return False
                finally:
                    conn.close()

            return alive

        pool = await backend._get_pool()  # the backend's own admin pool, for the baseline

        async def baseline() -> None:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("SELECT 1")
                await cur.fetchall()

        return await _cycles("mariadb", backend, session, baseline, cycles)
    finally:
        await _revoke_all(backend)
        await backend.close()
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()


async def bench_postgres(cycles: int) -> tuple[float, float]:
    """PostgreSQL over TCP, in a database of its own."""
    database = f"secdbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres")
    backend = PostgresBackend(
        PostgresSettings(database=database, host=PG_HOST, port=PG_PORT, user="postgres")
    )
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=database)
        await conn.execute(
            "CREATE TABLE patients (id int, name text); CREATE TABLE secrets (id int);"
            "INSERT INTO patients VALUES (1, 'a'), (2, 'b');"
        )
        await conn.close()

        async def session(account: str, password: str) -> Callable[[], Awaitable[bool]]:
            conn = await asyncpg.connect(
                host=PG_HOST, port=PG_PORT, user=account, password=password, database=database
            )
            await conn.fetchval("SELECT count(*) FROM patients")

            async def alive() -> bool:
                try:
                    await conn.fetchval("SELECT 1")
                    return True
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    return False
                finally:
                    conn.terminate()

            return alive

        pool = await backend._get_pool()  # the backend's own admin pool, for the baseline

        async def baseline() -> None:
            await pool.fetchval("SELECT 1")

        return await _cycles("postgres", backend, session, baseline, cycles)
    finally:
        await _revoke_all(backend)
        await backend.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def bench(cycles: int) -> str:
    """Both backends, one after the other; return the final name=value line."""
    my_issue, my_revoke = await bench_mariadb(cycles)
    pg_issue, pg_revoke = await bench_postgres(cycles)
    return (
        f"mariadb_issue_ms={my_issue:.1f} mariadb_revoke_ms={my_revoke:.1f}"
        f" postgres_issue_ms={pg_issue:.1f} postgres_revoke_ms={pg_revoke:.1f}"
    )


def main() -> None:
    """Parse --cycles and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=30, help="issue/revoke cycles per backend")
    args = parser.parse_args()
    # The PostgreSQL backend warns once about other databases that let PUBLIC connect; that is
    # this machine's setup, not a figure.
    logging.basicConfig(level=logging.ERROR)
    print(asyncio.run(bench(args.cycles)))


if __name__ == "__main__":
    main()
