"""The database relay against the real local PostgreSQL (TCP) and MariaDB (Unix socket)."""

from __future__ import annotations

import asyncio
import socket
import stat
import struct
from pathlib import Path

import pytest

from secd_executor.relay import DatabaseRelay

from .conftest import SANDBOX_UID, pg_select_one


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


async def test_relays_postgres_over_tcp(tmp_path: Path, postgres: tuple[str, int]) -> None:
    path = tmp_path / "run" / "db.sock"
    async with DatabaseRelay(path, host=postgres[0], port=postgres[1]) as relay:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert (st.st_uid, st.st_gid) == (SANDBOX_UID, SANDBOX_UID)
        assert stat.S_IMODE(st.st_mode) == 0o600
        with _connect(relay.path) as sock:
            assert await asyncio.to_thread(pg_select_one, sock) == "1"
    assert not path.exists()


async def test_relays_mariadb_over_a_unix_socket(tmp_path: Path, mariadb: str) -> None:
    async with DatabaseRelay(tmp_path / "db.sock", socket=mariadb) as relay:
        reader, writer = await asyncio.open_unix_connection(relay.path)
        try:
            # MySQL speaks first: a 4-byte packet header, then protocol version 10.
            header = await asyncio.wait_for(reader.readexactly(5), 10)
        finally:
            writer.close()
    length = int.from_bytes(header[:3], "little")
    assert 0 < length < 1024
    assert header[4] == 10


async def test_close_cuts_live_connections(tmp_path: Path, postgres: tuple[str, int]) -> None:
    relay = DatabaseRelay(tmp_path / "db.sock", host=postgres[0], port=postgres[1])
    await relay.start()
    socks = [_connect(relay.path) for _ in range(3)]
    try:
        for sock in socks:
            assert await asyncio.to_thread(pg_select_one, sock) == "1"
        await asyncio.wait_for(relay.close(), 5)
        for sock in socks:
            sock.settimeout(5)
            try:
                assert await asyncio.to_thread(sock.recv, 1) == b""
            except ConnectionResetError:
                pass
        with pytest.raises(FileNotFoundError):
            _connect(relay.path)
    finally:
        for sock in socks:
            sock.close()
    await relay.close()


async def test_client_eof_is_passed_upstream(tmp_path: Path, postgres: tuple[str, int]) -> None:
    async with DatabaseRelay(tmp_path / "db.sock", host=postgres[0], port=postgres[1]) as relay:
        with _connect(relay.path) as sock:
            sock.sendall(struct.pack("!II", 8, 80877103))
            assert await asyncio.to_thread(sock.recv, 1) == b"N"
            # The server ends the session when the client half-closes; we must see that end.
            sock.shutdown(socket.SHUT_WR)
            assert await asyncio.to_thread(sock.recv, 1) == b""
        await asyncio.sleep(0.05)
        assert relay._connections == set()


async def test_unreachable_database_closes_the_client(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    async with DatabaseRelay(tmp_path / "db.sock", host="127.0.0.1", port=port) as relay:
        with _connect(relay.path) as sock:
            assert await asyncio.to_thread(sock.recv, 1) == b""


async def test_start_twice_and_close_twice(tmp_path: Path) -> None:
    relay = DatabaseRelay(tmp_path / "db.sock", socket="/nonexistent.sock", uid=12345)
    await relay.start()
    assert relay.path.stat().st_uid == 12345
    with pytest.raises(RuntimeError):
        await relay.start()
    await relay.close()
    await relay.close()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"host": "127.0.0.1"}, {"port": 5432}, {"host": "h", "port": 1, "socket": "/s"}],
)
def test_needs_exactly_one_target(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DatabaseRelay(tmp_path / "db.sock", **kwargs)  # type: ignore[arg-type]
