"""The executor's side of a run's database access: a Unix socket that only the sandbox can reach.

The socket file is bind-mounted into the sandbox (see sandbox.py), where forwarder.py exposes it
as 127.0.0.1:PORT. Each accepted connection gets its own upstream connection to the real
database, and close() tears every one of them down, so a finished or cancelled run keeps no
path to the data.

Each connection is handled as: accept -> (future: inspect the client's first bytes and admit
only the run's own account) -> connect upstream -> pump both ways. Nothing is read from the
client before the upstream is connected today, so adding that inspector later only means
reading the first message, deciding, and writing it upstream ahead of the pumps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 65536
_CONNECT_TIMEOUT_S = 10.0


class _Connection:
    """One relayed client with its upstream; abort() cuts both at once."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.writers: list[asyncio.StreamWriter] = [client]

    def abort(self) -> None:
        """Drop both sockets without flushing; used on errors and on relay close."""
        for writer in self.writers:
            writer.transport.abort()


class DatabaseRelay:
    """A Unix socket at `path` relaying each connection to the database (TCP or Unix socket)."""

    def __init__(
        self,
        path: Path,
        *,
        host: str | None = None,
        port: int | None = None,
        socket: str | None = None,
        uid: int = 65534,
    ) -> None:
        if socket is not None and (host is not None or port is not None):
            raise ValueError("give either host and port, or socket")
        if socket is None and (host is None or port is None):
            raise ValueError("give either host and port, or socket")
        self.path = Path(path)
        self.host = host
        self.port = port
        self.socket = socket
        self.uid = uid
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on `path`, owned by the sandbox uid, mode 0600: only it (and root) connect."""
        if self._server is not None:
            raise RuntimeError("relay already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        # Until these two calls the file is root-owned and not writable by others, so no
        # process can slip in a connection with the wrong identity in between.
        os.chown(self.path, self.uid, self.uid)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening, cut every open relayed connection and remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                if self.path.is_socket():
                    self.path.unlink()

    async def __aenter__(self) -> DatabaseRelay:
        """Start the relay for the span of an `async with` block."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the relay when the `async with` block ends."""
        await self.close()

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a fresh connection to the database."""
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            if self.socket is not None:
                return await asyncio.open_unix_connection(self.socket)
            return await asyncio.open_connection(self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay one accepted connection until either side ends it or the relay closes."""
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(writer)
        self._tasks.add(task)
        self._connections.add(connection)
        try:
            if self._server is None:
                return
            try:
                up_reader, up_writer = await self._connect_upstream()
            except (OSError, TimeoutError) as exc:
                log.warning("database relay %s: upstream unreachable: %s", self.path, exc)
                return
            connection.writers.append(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, connection),
                self._pump(up_reader, writer, connection),
            )
        finally:
            for w in connection.writers:
                w.close()
            self._connections.discard(connection)
            self._tasks.discard(task)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> None:
        """Copy one direction; pass EOF on as a half-close, and abort both sides on errors."""
        try:
            while data := await reader.read(_CHUNK):
                if writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
            if not writer.is_closing() and writer.can_write_eof():
                writer.write_eof()
        except OSError:
            connection.abort()
