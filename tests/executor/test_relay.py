"""The database relay admits only the run's own account, against the real local PostgreSQL and
MariaDB and against recording listeners that prove a refused login never reached a server.

The recording listeners (`Recorder`, `FakeMySQL`) are local stand-ins for a database server:
they record every byte that arrives. FakeMySQL answers like MySQL's documented connection
phase (protocol-10 greeting, OK to every packet) so that a real client library completes its
login against it; it checks no password.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import stat
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomysql
import asyncpg
import pymysql
import pytest
import pytest_asyncio

from secd_executor.relay import REFUSAL, DatabaseRelay

from .conftest import MARIADB_SOCKET, PG_HOST, PG_PORT, SANDBOX_UID, pg_select_one

SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)
ER_ACCESS_DENIED = 1045
CLIENT_SSL, CLIENT_COMPRESS, CLIENT_PROTOCOL_41 = 0x800, 0x20, 0x200


def startup(params: dict[str, str] | list[tuple[str, str]], version: int = 196608) -> bytes:
    """A PostgreSQL StartupMessage with these parameters, in order."""
    pairs = params.items() if isinstance(params, dict) else params
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs) + b"\0"
    return struct.pack("!II", 8 + len(body), version) + body


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes (a reset counts as closed)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def my_packet(seq: int, payload: bytes) -> bytes:
    """One MySQL packet."""
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def read_my_packet(sock: socket.socket) -> tuple[int, bytes]:
    """(sequence id, payload) of the next MySQL packet on a blocking socket."""
    header = _recv_exact(sock, 4)
    return header[3], _recv_exact(sock, int.from_bytes(header[:3], "little"))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def handshake_response(user: bytes, capabilities: int = CLIENT_PROTOCOL_41 | 0x8000) -> bytes:
    """A HandshakeResponse41 payload for `user` with an empty auth response."""
    return struct.pack("<IIB23s", capabilities, 1 << 24, 33, b"") + user + b"\0" + b"\0"


def change_user(user: bytes) -> bytes:
    """A COM_CHANGE_USER payload for `user`, empty auth, no database."""
    return b"\x11" + user + b"\0" + b"\0" + b"\0" + (33).to_bytes(2, "little")


# ---------------------------------------------------------------- recording stand-ins


@dataclass
class Recorder:
    """A TCP listener that records connections and every byte received; sends `greeting`."""

    greeting: bytes = b""
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Recorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.greeting:
            writer.write(self.greeting)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                self.received += data
        writer.close()


def fake_greeting(capabilities: int) -> bytes:
    """A protocol-10 server greeting offering mysql_native_password."""
    payload = (
        b"\x0a5.5.5-10.11.0-FakeMySQL\0"
        + struct.pack("<I", 7)
        + b"abcdefgh\0"
        + struct.pack("<HBHH", capabilities & 0xFFFF, 33, 2, capabilities >> 16)
        + bytes([21])
        + b"\0" * 10
        + b"ijklmnopqrst\0"
        + b"mysql_native_password\0"
    )
    return my_packet(0, payload)


FAKE_CAPABILITIES = 0xFFFFF  # the low 20 capability bits: SSL and compression among them


@dataclass
class FakeMySQL:
    """A stand-in MySQL server: greets (SSL and compression offered), records every packet it
    receives, and answers each with OK so a client library's login completes."""

    packets: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeMySQL:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(fake_greeting(FAKE_CAPABILITIES))
        ok = b"\x00\x00\x00\x02\x00\x00\x00"
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(4)
                payload = await reader.readexactly(int.from_bytes(header[:3], "little"))
                self.packets.append((header[3], payload))
                if payload[:1] == b"\x01":  # COM_QUIT
                    break
                writer.write(my_packet((header[3] + 1) & 0xFF, ok))
        writer.close()


@contextlib.asynccontextmanager
async def tcp_front(path: Path) -> AsyncIterator[tuple[int, list[bytes]]]:
    """127.0.0.1:PORT forwarding to the relay's socket, as forwarder.py does inside a sandbox;
    yields the port and the first bytes each client sent."""
    first: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(path))
        seen = bytearray()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, spy: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if spy and len(seen) < 8:
                        seen.extend(data[: 8 - len(seen)])
                        if len(seen) == 8:
                            first.append(bytes(seen))
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], first
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- real servers, own accounts


@dataclass(frozen=True)
class RunAccount:
    """A database and an account in it with a password and SELECT on `patients`."""

    database: str
    account: str
    password: str


def _name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


@pytest_asyncio.fixture(scope="module")
async def pg_run(postgres: tuple[str, int]) -> AsyncIterator[RunAccount]:
    """A fresh database and login role on the local PostgreSQL."""
    run = RunAccount(_name("secdtest_"), _name("secdtest_acct_"), secrets.token_urlsafe(24))
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{run.database}"')
        await admin.execute(f"CREATE ROLE \"{run.account}\" LOGIN PASSWORD '{run.password}'")
        conn = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", database=run.database
        )
        try:
            await conn.execute(
                "CREATE TABLE patients (id int); INSERT INTO patients VALUES (1), (2)"
            )
            await conn.execute(f'GRANT SELECT ON patients TO "{run.account}"')
        finally:
            await conn.close()
        yield run
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{run.database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{run.account}"')
        await admin.close()


@pytest_asyncio.fixture(scope="module")
async def my_run(mariadb: str) -> AsyncIterator[RunAccount]:
    """A fresh database and 'localhost' user on the local MariaDB."""
    run = RunAccount(_name("secdtest_"), _name("secdtest_acct_"), secrets.token_urlsafe(24))
    admin = await aiomysql.connect(unix_socket=mariadb, user="root", autocommit=True)
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{run.database}`")
            await cur.execute(f"CREATE TABLE `{run.database}`.patients (id int)")
            await cur.execute(f"INSERT INTO `{run.database}`.patients VALUES (1), (2)")  # noqa: S608
            await cur.execute(
                f"CREATE USER '{run.account}'@'localhost' IDENTIFIED BY %s", [run.password]
            )
            await cur.execute(f"GRANT SELECT ON `{run.database}`.* TO '{run.account}'@'localhost'")
        yield run
    finally:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP USER IF EXISTS '{run.account}'@'localhost'")
            await cur.execute(f"DROP DATABASE IF EXISTS `{run.database}`")
        admin.close()


def pg_relay(path: Path, run: RunAccount, **target: object) -> DatabaseRelay:
    """A PostgreSQL relay for `run`, to the local server unless `target` says otherwise."""
    target = target or {"host": PG_HOST, "port": PG_PORT}
    return DatabaseRelay(
        path, account=run.account, kind="postgres", database=run.database, **target
    )


def my_relay(path: Path, run: RunAccount, **target: object) -> DatabaseRelay:
    """A MySQL relay for `run`, to the local server's socket unless `target` says otherwise."""
    target = target or {"socket": MARIADB_SOCKET}
    return DatabaseRelay(path, account=run.account, kind="mysql", **target)


@contextlib.asynccontextmanager
async def recorded_pg(
    tmp_path: Path, run: RunAccount
) -> AsyncIterator[tuple[Recorder, DatabaseRelay]]:
    """A PostgreSQL relay for `run` in front of a Recorder."""
    async with Recorder() as server:
        relay = pg_relay(tmp_path / "recorded.sock", run, host="127.0.0.1", port=server.port)
        async with relay:
            yield server, relay


@contextlib.asynccontextmanager
async def recorded_my(
    tmp_path: Path, run: RunAccount
) -> AsyncIterator[tuple[FakeMySQL, DatabaseRelay]]:
    """A MySQL relay for `run` in front of a FakeMySQL."""
    async with FakeMySQL() as server:
        relay = my_relay(tmp_path / "recorded.sock", run, host="127.0.0.1", port=server.port)
        async with relay:
            yield server, relay


# ---------------------------------------------------------------- PostgreSQL


async def test_postgres_superuser_is_refused_before_any_server_sees_it(
    tmp_path: Path, pg_run: RunAccount
) -> None:
    async with (
        recorded_pg(tmp_path, pg_run) as (server, relay),
        tcp_front(relay.path) as (port, first),
    ):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=REFUSAL):
            # asyncpg's default sslmode is prefer: it asks for TLS first and gets 'N'.
            await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=10
            )
    assert first == [SSL_REQUEST]
    assert server.connections == 0
    assert server.received == b""


async def test_postgres_superuser_is_refused_by_the_real_server_path(
    tmp_path: Path, pg_run: RunAccount
) -> None:
    # The server itself would admit postgres without a password (trust): the relay must not.
    direct = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="postgres")
    await direct.close()
    async with pg_relay(tmp_path / "db.sock", pg_run) as relay, tcp_front(relay.path) as (port, _):
        for user, database in (("postgres", "postgres"), ("postgres", pg_run.database)):
            with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=REFUSAL):
                await asyncpg.connect(
                    host="127.0.0.1", port=port, user=user, database=database, timeout=10
                )
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user=pg_run.account,
            password=pg_run.password,
            database=pg_run.database,
            timeout=10,
        )
        try:
            assert await conn.fetchval("SELECT count(*) FROM patients") == 2
            assert await conn.fetchval("SELECT current_user") == pg_run.account
            # TLS was asked for and declined on this local hop.
            assert conn._transport.get_extra_info("sslcontext") is None
        finally:
            await conn.close()


async def test_postgres_other_database_is_refused(tmp_path: Path, pg_run: RunAccount) -> None:
    async with pg_relay(tmp_path / "db.sock", pg_run) as relay, tcp_front(relay.path) as (port, _):
        # The server would admit it (PUBLIC may CONNECT to "postgres"); the relay does not.
        for database in ("postgres", None):
            with pytest.raises(
                asyncpg.InvalidAuthorizationSpecificationError,
                match=f"this run may connect only to database {pg_run.database}",
            ):
                await asyncpg.connect(
                    host="127.0.0.1",
                    port=port,
                    user=pg_run.account,
                    password=pg_run.password,
                    database=database,
                    timeout=10,
                )


async def test_postgres_only_the_startup_message_reaches_the_server(
    tmp_path: Path, pg_run: RunAccount
) -> None:
    message = startup({"user": pg_run.account, "database": pg_run.database})
    async with recorded_pg(tmp_path, pg_run) as (server, relay):
        with _connect(relay.path) as sock:
            sock.sendall(GSSENC_REQUEST)
            assert await asyncio.to_thread(sock.recv, 1) == b"N"
            sock.sendall(SSL_REQUEST)
            assert await asyncio.to_thread(sock.recv, 1) == b"N"
            sock.sendall(message + b"Q\0\0\0\x0dSELECT 1\0")
            await asyncio.sleep(0.2)
    assert server.connections == 1
    # The encryption requests were the relay's to answer; the server got the startup onwards.
    assert bytes(server.received) == message + b"Q\0\0\0\x0dSELECT 1\0"


HOSTILE_STARTUPS = {
    "superuser": lambda run: startup({"user": "postgres", "database": run.database}),
    "no user": lambda run: startup({"database": run.database}),
    "user twice, ours first": lambda run: startup(
        [("user", run.account), ("database", run.database), ("user", "postgres")]
    ),
    "user twice, ours last": lambda run: startup(
        [("user", "postgres"), ("user", run.account), ("database", run.database)]
    ),
    "NUL inside the name": lambda run: startup({"user": run.account + "\0postgres"}),
    "account as a prefix": lambda run: startup({"user": run.account + "x"}),
    "upper case": lambda run: startup({"user": run.account.upper()}),
    "trailing space": lambda run: startup({"user": run.account + " "}),
    "protocol 2": lambda run: startup({"user": run.account}, version=2 << 16),
    "no final terminator": lambda run: _relength(startup({"user": run.account})[:-1]),
    "bytes after the terminator": lambda run: _relength(startup({"user": run.account}) + b"x\0"),
    "not UTF-8": lambda run: _relength(startup({"user": run.account})[:-1] + b"\xff\0\0"),
    "cancel request": lambda run: struct.pack("!IIII", 16, 80877102, 1234, 5678),
    "SSL asked twice": lambda run: SSL_REQUEST + SSL_REQUEST + startup({"user": run.account}),
    "too long": lambda run: struct.pack("!II", 1_000_000, 196608) + b"x" * 100,
    "too short": lambda run: struct.pack("!I", 4),
}


def _relength(message: bytes) -> bytes:
    return struct.pack("!I", len(message)) + message[4:]


@pytest.mark.parametrize("case", sorted(HOSTILE_STARTUPS))
async def test_postgres_hostile_startup_never_reaches_the_server(
    tmp_path: Path, pg_run: RunAccount, case: str
) -> None:
    async with recorded_pg(tmp_path, pg_run) as (server, relay):
        with _connect(relay.path) as sock:
            sock.sendall(HOSTILE_STARTUPS[case](pg_run))
            answer = await asyncio.to_thread(recv_all, sock)
    assert server.connections == 0, case
    assert server.received == b""
    # Whatever the relay answered ('N' to a first SSLRequest, an error), it closed afterwards.
    assert answer.lstrip(b"N")[:1] in (b"", b"E"), answer


async def test_postgres_refusal_is_an_error_response(tmp_path: Path, pg_run: RunAccount) -> None:
    async with pg_relay(tmp_path / "db.sock", pg_run, socket="/nonexistent") as relay:
        with _connect(relay.path) as sock:
            sock.sendall(startup({"user": "postgres"}))
            answer = await asyncio.to_thread(recv_all, sock)
    kind, length = struct.unpack("!cI", answer[:5])
    assert kind == b"E" and len(answer) == length + 1
    fields = dict((f[:1], f[1:].decode()) for f in answer[5:-1].split(b"\0") if f)
    assert fields == {b"S": "FATAL", b"V": "FATAL", b"C": "28000", b"M": REFUSAL}


async def test_silent_client_is_closed(tmp_path: Path, pg_run: RunAccount) -> None:
    async with Recorder() as server:
        for relay in (
            pg_relay(tmp_path / "pg.sock", pg_run, host="127.0.0.1", port=server.port),
            my_relay(tmp_path / "my.sock", pg_run, host="127.0.0.1", port=server.port),
        ):
            relay.handshake_timeout_s = 0.3
            async with relay:
                with _connect(relay.path) as sock:
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    answer = await asyncio.to_thread(recv_all, sock)
                    assert 0.25 < loop.time() - started < 5
                    assert relay._connections == set()
            if relay.kind == "postgres":
                assert answer == b""
        # The MySQL relay had to connect (the server speaks first), but nothing was sent to it.
        assert server.connections == 1
        assert server.received == b""


async def test_relays_postgres_over_tcp(tmp_path: Path, postgres: tuple[str, int]) -> None:
    path = tmp_path / "run" / "db.sock"
    host, port = postgres
    async with DatabaseRelay(
        path, account="postgres", kind="postgres", host=host, port=port
    ) as relay:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert (st.st_uid, st.st_gid) == (SANDBOX_UID, SANDBOX_UID)
        assert stat.S_IMODE(st.st_mode) == 0o600
        with _connect(relay.path) as sock:
            assert await asyncio.to_thread(pg_select_one, sock) == "1"
    assert not path.exists()


async def test_close_cuts_live_connections(tmp_path: Path, pg_run: RunAccount) -> None:
    relay = pg_relay(tmp_path / "db.sock", pg_run)
    await relay.start()
    conns = []
    try:
        async with tcp_front(relay.path) as (port, _):
            for _ in range(3):
                conn = await asyncpg.connect(
                    host="127.0.0.1",
                    port=port,
                    user=pg_run.account,
                    password=pg_run.password,
                    database=pg_run.database,
                )
                conns.append(conn)
                assert await conn.fetchval("SELECT 1") == 1
            sleeping = asyncio.create_task(conns[0].fetchval("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.1)
            await asyncio.wait_for(relay.close(), 5)
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await asyncio.wait_for(sleeping, 5)
            for conn in conns[1:]:
                with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                    await conn.fetchval("SELECT 1")
            with pytest.raises(FileNotFoundError):
                _connect(relay.path)
    finally:
        for conn in conns:
            conn.terminate()
    await relay.close()


async def test_client_eof_is_passed_upstream(tmp_path: Path, postgres: tuple[str, int]) -> None:
    relay = DatabaseRelay(
        tmp_path / "db.sock",
        account="postgres",
        kind="postgres",
        host=postgres[0],
        port=postgres[1],
    )
    async with relay:
        with _connect(relay.path) as sock:
            assert await asyncio.to_thread(pg_select_one, sock) == "1"
            # The server ends the session when the client half-closes; we must see that end.
            sock.shutdown(socket.SHUT_WR)
            assert await asyncio.to_thread(recv_all, sock) == b""
        await asyncio.sleep(0.05)
        assert relay._connections == set()


async def test_unreachable_database_closes_the_client(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    target = {"host": "127.0.0.1", "port": port}
    async with DatabaseRelay(tmp_path / "pg.sock", account="a", kind="postgres", **target) as relay:
        with _connect(relay.path) as sock:
            sock.sendall(startup({"user": "a"}))
            answer = await asyncio.to_thread(recv_all, sock)
        assert answer[:1] == b"E" and b"C08006\0" in answer
    async with DatabaseRelay(tmp_path / "my.sock", account="a", kind="mysql", **target) as relay:
        with _connect(relay.path) as sock:
            assert await asyncio.to_thread(recv_all, sock) == b""


# ---------------------------------------------------------------- MySQL / MariaDB


async def test_mariadb_root_is_refused_before_the_server_sees_a_login(
    tmp_path: Path, my_run: RunAccount
) -> None:
    async with recorded_my(tmp_path, my_run) as (server, relay):
        with pytest.raises(pymysql.err.OperationalError) as excinfo:
            await asyncio.to_thread(
                pymysql.connect, unix_socket=str(relay.path), user="root", password=""
            )
        assert excinfo.value.args == (ER_ACCESS_DENIED, REFUSAL)
        await asyncio.sleep(0.1)
    # The server greeted (it speaks first) but received not one byte: no login was attempted.
    assert server.connections == 1
    assert server.packets == []


async def test_mariadb_root_is_refused_by_the_real_server_path(
    tmp_path: Path, my_run: RunAccount
) -> None:
    # The server itself admits root on its socket (unix_socket auth trusts a root peer, which
    # the relay is), so only the relay's check stands between a job and root.
    direct = await asyncio.to_thread(
        pymysql.connect, unix_socket=MARIADB_SOCKET, user="root", password=""
    )
    direct.close()
    async with my_relay(tmp_path / "db.sock", my_run) as relay:
        for user, password in (("root", ""), ("mysql", ""), ("root", my_run.password)):
            with pytest.raises(pymysql.err.OperationalError) as excinfo:
                await asyncio.to_thread(
                    pymysql.connect, unix_socket=str(relay.path), user=user, password=password
                )
            assert excinfo.value.args == (ER_ACCESS_DENIED, REFUSAL)
        conn = await aiomysql.connect(
            unix_socket=str(relay.path),
            user=my_run.account,
            password=my_run.password,
            db=my_run.database,
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT count(*), CURRENT_USER() FROM patients")
                assert await cur.fetchone() == (2, f"{my_run.account}@localhost")
        finally:
            conn.close()


async def test_mariadb_greeting_offers_no_tls_and_the_login_passes(
    tmp_path: Path, my_run: RunAccount
) -> None:
    async with recorded_my(tmp_path, my_run) as (server, relay):
        with _connect(relay.path) as sock:
            _, greeting = await asyncio.to_thread(read_my_packet, sock)
        # PyMySQL's default is 'preferred' TLS: it would start TLS if the greeting offered it.
        conn = await asyncio.to_thread(
            pymysql.connect, unix_socket=str(relay.path), user=my_run.account, password="pw"
        )
        conn.close()
    # Control: the same client straight to the fake asks for TLS, because it is offered.
    async with FakeMySQL() as direct:
        with pytest.raises(pymysql.err.OperationalError):
            await asyncio.to_thread(
                pymysql.connect, host="127.0.0.1", port=direct.port, user="x", connect_timeout=5
            )
    assert int.from_bytes(direct.packets[0][1][:4], "little") & CLIENT_SSL
    version_end = greeting.index(b"\0", 1)
    low = int.from_bytes(greeting[version_end + 14 : version_end + 16], "little")
    assert not low & (CLIENT_SSL | CLIENT_COMPRESS)
    assert low | CLIENT_SSL | CLIENT_COMPRESS == FAKE_CAPABILITIES & 0xFFFF
    # The fake saw PyMySQL's login as the account, in plain text, then its queries.
    _, response = server.packets[0]
    assert not int.from_bytes(response[:4], "little") & CLIENT_SSL
    assert response[32:].split(b"\0")[0] == my_run.account.encode()
    assert len(server.packets) >= 2


HOSTILE_HANDSHAKES = {
    "TLS request": struct.pack("<IIB23s", CLIENT_PROTOCOL_41 | CLIENT_SSL, 1 << 24, 33, b""),
    "compression": handshake_response(b"ACCOUNT", CLIENT_PROTOCOL_41 | CLIENT_COMPRESS),
    "pre-4.1 protocol": handshake_response(b"ACCOUNT", 0x8000),
    "short": b"\x00\x02\x00\x00",
    "no terminator": handshake_response(b"ACCOUNT")[:32] + b"ACCOUNT",
    "prefix": handshake_response(b"ACCOUNTx"),
    "NUL-split": handshake_response(b"root\0ACCOUNT"),
    "root": handshake_response(b"root"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HANDSHAKES))
async def test_mariadb_hostile_handshake_never_reaches_the_server(
    tmp_path: Path, my_run: RunAccount, case: str
) -> None:
    payload = HOSTILE_HANDSHAKES[case].replace(b"ACCOUNT", my_run.account.encode())
    async with recorded_my(tmp_path, my_run) as (server, relay):
        with _connect(relay.path) as sock:
            await asyncio.to_thread(read_my_packet, sock)
            sock.sendall(my_packet(1, payload))
            answer = await asyncio.to_thread(recv_all, sock)
        await asyncio.sleep(0.05)
    assert server.packets == [], case
    assert answer[4:5] == b"\xff" and answer[3] == 2, case
    assert int.from_bytes(answer[5:7], "little") == ER_ACCESS_DENIED


async def test_mariadb_change_user_to_another_account_is_refused(
    tmp_path: Path, my_run: RunAccount
) -> None:
    async with my_relay(tmp_path / "db.sock", my_run) as relay:
        conn = await asyncio.to_thread(
            pymysql.connect,
            unix_socket=str(relay.path),
            user=my_run.account,
            password=my_run.password,
            database=my_run.database,
        )
        try:
            sock = conn._sock
            sock.sendall(my_packet(0, change_user(b"root")))
            answer = await asyncio.to_thread(recv_all, sock)
        finally:
            conn._force_close()
    assert answer[4:5] == b"\xff" and answer[3] == 1
    assert answer[7:].decode() == "#28000" + REFUSAL
    # Against the recorder, the command itself never arrives; one for the account itself does.
    async with recorded_my(tmp_path, my_run) as (server, relay):
        with _connect(relay.path) as sock:
            await asyncio.to_thread(read_my_packet, sock)
            sock.sendall(my_packet(1, handshake_response(my_run.account.encode())))
            await asyncio.to_thread(read_my_packet, sock)
            sock.sendall(my_packet(0, change_user(my_run.account.encode())))
            await asyncio.to_thread(read_my_packet, sock)
            sock.sendall(my_packet(0, b"\x03SELECT 1"))
            await asyncio.to_thread(read_my_packet, sock)
            sock.sendall(my_packet(0, change_user(b"root")))
            answer = await asyncio.to_thread(recv_all, sock)
        await asyncio.sleep(0.05)
    assert [p[1][:1] for p in server.packets] == [b"\x00", b"\x11", b"\x03"]
    assert server.packets[1][1] == change_user(my_run.account.encode())
    assert answer[4:5] == b"\xff"


async def test_mariadb_large_packets_pass_intact(tmp_path: Path, my_run: RunAccount) -> None:
    async with recorded_my(tmp_path, my_run) as (server, relay):
        with _connect(relay.path) as sock:
            await asyncio.to_thread(read_my_packet, sock)
            sock.sendall(my_packet(1, handshake_response(my_run.account.encode())))
            await asyncio.to_thread(read_my_packet, sock)
            big = b"\x03SELECT '" + b"x" * 300_000 + b"'"
            await asyncio.to_thread(sock.sendall, my_packet(0, big))
            await asyncio.to_thread(read_my_packet, sock)
    assert server.packets[1] == (0, big)


async def test_start_twice_and_close_twice(tmp_path: Path) -> None:
    relay = DatabaseRelay(
        tmp_path / "db.sock", account="a", kind="mysql", socket="/nonexistent.sock", uid=12345
    )
    await relay.start()
    assert relay.path.stat().st_uid == 12345
    with pytest.raises(RuntimeError):
        await relay.start()
    await relay.close()
    await relay.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"host": "127.0.0.1"},
        {"port": 5432},
        {"host": "h", "port": 1, "socket": "/s"},
        {"socket": "/s", "kind": "oracle"},
        {"socket": "/s", "account": ""},
        {"socket": "/s", "account": "a\0b"},
    ],
)
def test_needs_exactly_one_target_a_kind_and_an_account(
    tmp_path: Path, kwargs: dict[str, object]
) -> None:
    args = {"account": "secd_x", "kind": "postgres"} | kwargs
    with pytest.raises(ValueError):
        DatabaseRelay(tmp_path / "db.sock", **args)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Neo4j (Bolt)

BOLT_MAGIC = b"\x60\x60\xb0\x17"
BOLT_UNAUTHORIZED = b"Neo.ClientError.Security.Unauthorized"
ACCOUNT = "secd_r0123456789abcdef012"


def pack(value: object) -> bytes:
    """PackStream encoding of None, bool, int, str, list, dict (enough for these tests)."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if -16 <= value < 128:
            return (value & 0xFF).to_bytes(1, "big")
        return b"\xcb" + value.to_bytes(8, "big", signed=True)
    if isinstance(value, str):
        data = value.encode()
        head = (
            bytes([0x80 | len(data)]) if len(data) < 16 else b"\xd1" + len(data).to_bytes(2, "big")
        )
        return head + data
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(pack(v) for v in value)
    if isinstance(value, dict):
        return bytes([0xA0 | len(value)]) + b"".join(pack(k) + pack(v) for k, v in value.items())
    raise TypeError(type(value))


def bolt_message(signature: int, *fields: object, raw_fields: bytes | None = None) -> bytes:
    """One chunked Bolt message."""
    body = bytes([0xB0 | len(fields), signature]) + (
        raw_fields if raw_fields is not None else b"".join(pack(f) for f in fields)
    )
    return len(body).to_bytes(2, "big") + body + b"\x00\x00"


def bolt_handshake(*versions: tuple[int, int]) -> bytes:
    """The client's handshake proposing (major, minor) versions, padded to four."""
    proposals = [bytes([0, 0, minor, major]) for major, minor in versions]
    return BOLT_MAGIC + b"".join(proposals).ljust(16, b"\0")


@dataclass
class FakeNeo4j:
    """A stand-in Neo4j server: answers Bolt 5.4 (or 4.4) like the documented protocol, records
    the handshake and every message it receives (raw), and answers each with SUCCESS so that
    the official driver logs in and runs a query. It checks no password."""

    proposals: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeNeo4j:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            handshake = await reader.readexactly(20)
            self.received += handshake
            offered = [handshake[i : i + 4] for i in range(4, 20, 4)]
            self.proposals.extend(offered)
            majors = {(p[3], p[2] - r) for p in offered for r in range(p[1] + 1)}
            chosen = (5, 4) if (5, 4) in majors else (4, 4)
            writer.write(bytes([0, 0, chosen[1], chosen[0]]))
            while True:
                data = b""
                while size := int.from_bytes(await reader.readexactly(2), "big"):
                    data += await reader.readexactly(size)
                if not data:
                    continue
                self.received += data
                self.messages.append(data)
                signature = data[1]
                if signature == 0x02:  # GOODBYE
                    break
                if signature == 0x01:  # HELLO
                    reply = bolt_message(0x70, {"server": "Neo4j/5.20.0", "connection_id": "b-1"})
                elif signature == 0x10:  # RUN
                    reply = bolt_message(0x70, {"fields": ["x"], "t_first": 0})
                elif signature == 0x3F:  # PULL
                    reply = bolt_message(0x71, [1]) + bolt_message(0x70, {"has_more": False})
                else:
                    reply = bolt_message(0x70, {})
                writer.write(reply)
        writer.close()


@contextlib.asynccontextmanager
async def recorded_neo4j(
    tmp_path: Path, account: str
) -> AsyncIterator[tuple[FakeNeo4j, DatabaseRelay]]:
    """A Bolt relay for `account` in front of a FakeNeo4j."""
    async with FakeNeo4j() as server:
        relay = DatabaseRelay(
            tmp_path / "bolt.sock",
            account=account,
            kind="neo4j",
            host="127.0.0.1",
            port=server.port,
        )
        async with relay:
            yield server, relay


async def test_neo4j_own_account_logs_in_through_the_official_driver(tmp_path: Path) -> None:
    neo4j = pytest.importorskip("neo4j")
    account, password = ACCOUNT, secrets.token_urlsafe(16)
    async with recorded_neo4j(tmp_path, account) as (server, relay), tcp_front(relay.path) as front:
        driver = neo4j.AsyncGraphDatabase.driver(
            f"bolt://127.0.0.1:{front[0]}", auth=(account, password)
        )
        try:
            records, _, _ = await driver.execute_query("RETURN 1 AS x")
        finally:
            await driver.close()
    assert [r["x"] for r in records] == [1]
    # The driver also offered Bolt 5.7's manifest; the server never saw that proposal.
    assert server.proposals and all(p[3] in (0, 3, 4, 5) for p in server.proposals)
    logon = next(m for m in server.messages if m[1] == 0x6A)
    assert account.encode() in logon and password.encode() in logon


async def test_neo4j_other_principal_is_refused_before_the_server_gets_credentials(
    tmp_path: Path,
) -> None:
    neo4j = pytest.importorskip("neo4j")
    async with recorded_neo4j(tmp_path, ACCOUNT) as (server, relay), tcp_front(relay.path) as front:
        driver = neo4j.AsyncGraphDatabase.driver(
            f"bolt://127.0.0.1:{front[0]}", auth=("neo4j", "the-admin-password")
        )
        try:
            with pytest.raises(neo4j.exceptions.AuthError, match=REFUSAL):
                await driver.execute_query("RETURN 1")
        finally:
            await driver.close()
    assert b"the-admin-password" not in server.received
    assert [m[1] for m in server.messages] == [0x01]  # HELLO (no credentials in 5.1+), no LOGON


LOGON_OK = {"scheme": "basic", "principal": ACCOUNT, "credentials": "pw"}
HOSTILE_BOLT = {
    "HTTP upgrade (WebSocket)": (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", [], False),
    "manifest only": (bolt_handshake((0xFF, 1)), [], False),
    "Bolt 4.4, principal neo4j": (
        bolt_handshake((4, 4)),
        [bolt_message(0x01, {"scheme": "basic", "principal": "neo4j", "credentials": "pw"})],
        True,
    ),
    "Bolt 4.4, scheme none": (
        bolt_handshake((4, 4)),
        [bolt_message(0x01, {"scheme": "none"})],
        True,
    ),
    "Bolt 5.4, LOGON as neo4j": (
        bolt_handshake((5, 4)),
        [
            bolt_message(0x01, {"user_agent": "x"}),
            bolt_message(0x6A, LOGON_OK | {"principal": "neo4j"}),
        ],
        True,
    ),
    "Bolt 5.4, credentials in HELLO": (
        bolt_handshake((5, 4)),
        [bolt_message(0x01, {"scheme": "basic", "principal": "neo4j", "credentials": "pw"})],
        True,
    ),
    "Bolt 5.4, repeated principal": (
        bolt_handshake((5, 4)),
        [
            bolt_message(0x01, {"user_agent": "x"}),
            bolt_message(
                0x6A,
                raw_fields=b"\xa4"
                + pack("scheme")
                + pack("basic")
                + pack("principal")
                + pack(ACCOUNT)
                + pack("credentials")
                + pack("pw")
                + pack("principal")
                + pack("neo4j"),
            ),
        ],
        True,
    ),
    "Bolt 5.4, impersonation in BEGIN": (
        bolt_handshake((5, 4)),
        [
            bolt_message(0x01, {"user_agent": "x"}),
            bolt_message(0x6A, LOGON_OK),
            bolt_message(0x11, {"imp_user": "neo4j"}),
        ],
        True,
    ),
    "Bolt 5.4, re-LOGON as neo4j": (
        bolt_handshake((5, 4)),
        [
            bolt_message(0x01, {"user_agent": "x"}),
            bolt_message(0x6A, LOGON_OK),
            bolt_message(0x6B),
            bolt_message(0x6A, LOGON_OK | {"principal": "neo4j"}),
        ],
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BOLT))
async def test_neo4j_hostile_bolt_never_reaches_the_server(tmp_path: Path, case: str) -> None:
    handshake, messages, negotiated = HOSTILE_BOLT[case]
    async with recorded_neo4j(tmp_path, ACCOUNT) as (server, relay):
        with _connect(relay.path) as sock:
            sock.sendall(handshake)
            if negotiated:
                assert await asyncio.to_thread(_recv_exact, sock, 4) != bytes(4)
            for message in messages:
                sock.sendall(message)
            answer = await asyncio.to_thread(recv_all, sock)
        await asyncio.sleep(0.05)
    # Everything before the offending message passed; the offending one (the last) did not.
    assert server.messages == [m[2:-2] for m in messages[:-1]], case
    assert b"neo4j" not in bytes(server.received), case
    if negotiated:
        assert answer[2:4] == b"\xb1\x7f" and BOLT_UNAUTHORIZED in answer, case
    else:
        assert server.connections == 0 or bytes(server.received) == b"", case
