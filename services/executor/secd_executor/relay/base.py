"""What every wire protocol of the relay shares: the listening socket, admission, copying, close.

`Relay` listens on a Unix socket, hands each accepted connection to its `WireProtocol`, which
reads the client's login and connects upstream only when it is the run's own (`admit`), then
copies bytes both ways (`forward` for the client's side, `pump` for the server's) until either
side ends. close() cuts every connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "REFUSAL",
    "Connection",
    "Dial",
    "Refused",
    "Relay",
    "Stream",
    "WireProtocol",
    "pump",
    "shown",
]

# One logger for the whole relay, whichever protocol module writes the line.
log = logging.getLogger("secd_executor.relay")

REFUSAL = "secd: only the run's own account may connect"
HANDSHAKE_TIMEOUT_S = 10.0

CHUNK = 65536
_CONNECT_TIMEOUT_S = 10.0

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# Opens the upstream connection (registered for abort); None, logged, when unreachable.
Dial = Callable[[], Awaitable[Stream | None]]


class Refused(Exception):
    """A connection the relay will not pass on; `reply` goes to the client before closing."""

    def __init__(self, why: str, reply: bytes = b"") -> None:
        """`why` is logged; `reply` is the protocol's own error message for the client."""
        super().__init__(why)
        self.reply = reply


class Connection:
    """One relayed client with its upstream; abort() cuts both at once."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        """A connection of `client`; its upstream joins `writers` once dialled."""
        self.writers: list[asyncio.StreamWriter] = [client]

    def abort(self) -> None:
        """Drop both sockets without flushing; used on errors and on relay close."""
        for writer in self.writers:
            writer.transport.abort()


class WireProtocol(Protocol):
    """One database wire protocol: who may log in, and what may pass once they have."""

    async def admit(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dial: Dial
    ) -> Stream | None:
        """Read the client's login and return the upstream it may use (dialled through `dial`).

        Raises Refused (its reply goes to the client) for a login that is not the run's own;
        None ends the connection quietly. Reads are bounded; the caller bounds the time.
        """
        ...

    async def forward(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        connection: Connection,
    ) -> None:
        """Copy the client's side upstream after admission, checking what must be checked."""
        ...


async def pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: Connection
) -> None:
    """Copy one direction; pass EOF on as a half-close, and abort both sides on errors."""
    try:
        while data := await reader.read(CHUNK):
            if writer.is_closing():
                break
            writer.write(data)
            await writer.drain()
        if not writer.is_closing() and writer.can_write_eof():
            writer.write_eof()
    except OSError:
        connection.abort()


def shown(name: str) -> str:
    """A client-chosen name made safe for one log line."""
    return ascii(name[:64])


class Relay:
    """A Unix socket at `path` whose connections `protocol` admits to the database.

    The database is reached by TCP (`host`, `port`) or by its Unix socket (`socket`).
    """

    def __init__(
        self,
        path: Path,
        *,
        protocol: WireProtocol,
        host: str | None = None,
        port: int | None = None,
        socket: str | None = None,
        uid: int = 65534,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        """Check the target; nothing listens until start()."""
        if socket is not None and (host is not None or port is not None):
            raise ValueError("give either host and port, or socket")
        if socket is None and (host is None or port is None):
            raise ValueError("give either host and port, or socket")
        self.path = Path(path)
        self.protocol = protocol
        self.host = host
        self.port = port
        self.socket = socket
        self.uid = uid
        self.handshake_timeout_s = handshake_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on `path`, owned by the sandbox uid, mode 0600: only it (and root) connect."""
        if self._server is not None:
            raise RuntimeError("relay already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A Unix socket's address is at most 107 bytes; a deep state folder's path can be
        # longer, so bind through the folder's descriptor (a short /proc/self/fd path).
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            address = f"/proc/self/fd/{folder}/{self.path.name}"
            self._server = await asyncio.start_unix_server(self._handle, path=address)
        finally:
            os.close(folder)
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

    async def __aenter__(self) -> Relay:
        """Start the relay for the span of an `async with` block."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the relay when the `async with` block ends."""
        await self.close()

    async def _connect_upstream(self) -> Stream:
        """Open a fresh connection to the database."""
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            if self.socket is not None:
                return await asyncio.open_unix_connection(self.socket)
            return await asyncio.open_connection(self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Admit or refuse one accepted connection, then relay it until either side ends it."""
        task = asyncio.current_task()
        assert task is not None
        connection = Connection(writer)
        self._tasks.add(task)
        self._connections.add(connection)
        try:
            if self._server is None:
                return
            try:
                async with asyncio.timeout(self.handshake_timeout_s):
                    upstream = await self.protocol.admit(
                        reader, writer, lambda: self._open(connection)
                    )
            except Refused as refused:
                log.warning("database relay %s: refused a connection: %s", self.path, refused)
                if refused.reply and not writer.is_closing():
                    writer.write(refused.reply)
                    with contextlib.suppress(OSError):
                        await asyncio.wait_for(writer.drain(), 1.0)
                return
            except TimeoutError:
                log.warning(
                    "database relay %s: closed a client that did not log in within %gs",
                    self.path,
                    self.handshake_timeout_s,
                )
                return
            except (asyncio.IncompleteReadError, OSError):
                return
            if upstream is None:
                return
            up_reader, up_writer = upstream
            await asyncio.gather(
                self.protocol.forward(reader, up_writer, writer, connection),
                pump(up_reader, writer, connection),
            )
        except asyncio.CancelledError:
            # close() cancels us; ending quietly keeps Python 3.11's stream callback from
            # logging every cancelled connection as an error.
            pass
        finally:
            for w in connection.writers:
                w.close()
            self._connections.discard(connection)
            self._tasks.discard(task)

    async def _open(self, connection: Connection) -> Stream | None:
        """The upstream connection, registered for abort; None (logged) when unreachable."""
        try:
            up_reader, up_writer = await self._connect_upstream()
        except (OSError, TimeoutError) as exc:
            log.warning("database relay %s: upstream unreachable: %s", self.path, exc)
            return None
        connection.writers.append(up_writer)
        return up_reader, up_writer
