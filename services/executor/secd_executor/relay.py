"""The executor's side of a run's database access: a Unix socket that admits only the run's account.

The socket file is bind-mounted into the sandbox (see sandbox.py), where forwarder.py exposes it
as 127.0.0.1:PORT. Each accepted connection is checked before anything reaches the database:

- PostgreSQL: the client speaks first. SSLRequest and GSSENCRequest are answered 'N' (the hop
  is local and the sandbox has no network, so TLS would protect nothing), a CancelRequest is
  closed, and the StartupMessage must name the run's account (and, when given, the run's
  database). Only then is the database connected to and the StartupMessage passed on; a refused
  client gets a FATAL 28000 ErrorResponse and the server never sees it.
- MySQL/MariaDB: the server speaks first, so the database is connected to, and its greeting is
  passed on with the SSL and compression capabilities cleared (the relay must be able to read
  every later packet). The client's HandshakeResponse41 must name the run's account before it
  is passed on; otherwise the client gets ERR 1045 and the server gets nothing but a closed
  socket. Later COM_CHANGE_USER commands must name the run's account too.
- Neo4j (Bolt): the client's handshake must be Bolt's, and only plain versions 3 to 5 are
  offered to the server (not the version-negotiation manifest of Bolt 5.7+). Every client
  message is then read whole (PackStream): a HELLO or LOGON must carry the basic scheme and the
  run's account as principal, and no message may impersonate another user (`imp_user`). A
  refused client gets a FAILURE (Neo.ClientError.Security.Unauthorized) and the server never
  receives the credentials.

This matters because the relay connects as root from outside the sandbox: a server's
password-less accounts (trust auth, or MariaDB's unix_socket plugin, which trusts the relay's
own uid) would otherwise be one connection away from every job.

Every read before admission is bounded in size and time. Nothing the client sends (passwords,
auth data) is logged; only a refused account name is, shortened. close() tears every connection
down, so a finished or cancelled run keeps no path to the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

__all__ = ["KINDS", "REFUSAL", "DatabaseRelay"]

log = logging.getLogger(__name__)

KINDS = ("postgres", "mysql", "neo4j")
REFUSAL = "secd: only the run's own account may connect"

_CHUNK = 65536
_CONNECT_TIMEOUT_S = 10.0
_HANDSHAKE_TIMEOUT_S = 10.0

# PostgreSQL: request codes in the first message, and the server's own startup-size cap.
_PG_SSL_REQUEST = 80877103
_PG_GSSENC_REQUEST = 80877104
_PG_CANCEL_REQUEST = 80877102
_PG_MAX_STARTUP = 10000

# MySQL: capability bits, commands and limits.
_MY_CLIENT_COMPRESS = 0x20
_MY_CLIENT_PROTOCOL_41 = 0x200
_MY_CLIENT_SSL = 0x800
_MY_CLIENT_ZSTD = 1 << 26
_MY_NO_PEEKING = _MY_CLIENT_SSL | _MY_CLIENT_COMPRESS | _MY_CLIENT_ZSTD
_MY_COM_CHANGE_USER = 0x11
_MY_COM_MULTI = 0xFE  # MariaDB: several commands in one packet, which would hide a change of user
_MY_MAX_GREETING = 16384
_MY_MAX_RESPONSE = 65536
_MY_MAX_PACKET = 0xFFFFFF
_MY_ER_ACCESS_DENIED = 1045

# Bolt: the handshake, message signatures, and the largest message read whole.
_BOLT_MAGIC = b"\x60\x60\xb0\x17"
_BOLT_HELLO = 0x01
_BOLT_LOGON = 0x6A
_BOLT_MAX_MESSAGE = 16 * 1024 * 1024
_BOLT_UNAUTHORIZED = "Neo.ClientError.Security.Unauthorized"


class _Refused(Exception):
    """A connection the relay will not pass on; `reply` goes to the client before closing."""

    def __init__(self, why: str, reply: bytes = b"") -> None:
        super().__init__(why)
        self.reply = reply


class _Connection:
    """One relayed client with its upstream; abort() cuts both at once."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.writers: list[asyncio.StreamWriter] = [client]

    def abort(self) -> None:
        """Drop both sockets without flushing; used on errors and on relay close."""
        for writer in self.writers:
            writer.transport.abort()


class DatabaseRelay:
    """A Unix socket at `path` relaying the run's own `account` to the database (TCP or socket).

    `kind` is "postgres", "mysql" or "neo4j"; `database`, when given, is the only PostgreSQL
    database a client may name (MySQL grants and Neo4j roles confine an account themselves).
    """

    def __init__(
        self,
        path: Path,
        *,
        account: str,
        kind: str,
        database: str | None = None,
        host: str | None = None,
        port: int | None = None,
        socket: str | None = None,
        uid: int = 65534,
        handshake_timeout_s: float = _HANDSHAKE_TIMEOUT_S,
    ) -> None:
        if socket is not None and (host is not None or port is not None):
            raise ValueError("give either host and port, or socket")
        if socket is None and (host is None or port is None):
            raise ValueError("give either host and port, or socket")
        if kind not in KINDS:
            # Bytes the relay cannot read could log in as anyone: refuse rather than pass them.
            raise ValueError(
                f"the database relay checks logins for {' and '.join(KINDS)} only; a {kind!r}"
                " database cannot be reached from the sandbox"
            )
        if not isinstance(account, str) or not account or "\x00" in account:
            raise ValueError("account must be a non-empty name")
        self.path = Path(path)
        self.account = account
        self.kind = kind
        self.database = database
        self.host = host
        self.port = port
        self.socket = socket
        self.uid = uid
        self.handshake_timeout_s = handshake_timeout_s
        self._account = account.encode()
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
        """Admit or refuse one accepted connection, then relay it until either side ends it."""
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(writer)
        self._tasks.add(task)
        self._connections.add(connection)
        try:
            if self._server is None:
                return
            try:
                async with asyncio.timeout(self.handshake_timeout_s):
                    if self.kind == "postgres":
                        upstream = await self._admit_postgres(reader, writer, connection)
                    elif self.kind == "mysql":
                        upstream = await self._admit_mysql(reader, writer, connection)
                    else:
                        upstream = await self._admit_bolt(reader, writer, connection)
            except _Refused as refused:
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
            if self.kind == "postgres":
                client_to_server = self._pump(reader, up_writer, connection)
            elif self.kind == "mysql":
                client_to_server = self._pump_mysql_commands(reader, up_writer, writer, connection)
            else:
                client_to_server = self._pump_bolt_messages(reader, up_writer, writer, connection)
            await asyncio.gather(client_to_server, self._pump(up_reader, writer, connection))
        except asyncio.CancelledError:
            # close() cancels us; ending quietly keeps Python 3.11's stream callback from
            # logging every cancelled connection as an error.
            pass
        finally:
            for w in connection.writers:
                w.close()
            self._connections.discard(connection)
            self._tasks.discard(task)

    async def _open(
        self, connection: _Connection
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The upstream connection, registered for abort; None (logged) when unreachable."""
        try:
            up_reader, up_writer = await self._connect_upstream()
        except (OSError, TimeoutError) as exc:
            log.warning("database relay %s: upstream unreachable: %s", self.path, exc)
            return None
        connection.writers.append(up_writer)
        return up_reader, up_writer

    # ------------------------------------------------------------------ PostgreSQL

    async def _admit_postgres(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Read the client's first messages; connect upstream only for the run's account."""
        declined: set[int] = set()
        while True:
            length = int.from_bytes(await reader.readexactly(4), "big")
            if not 8 <= length <= _PG_MAX_STARTUP:
                raise _Refused(f"startup message of {length} bytes", _pg_error("invalid startup"))
            body = await reader.readexactly(length - 4)
            code = int.from_bytes(body[:4], "big")
            if code in (_PG_SSL_REQUEST, _PG_GSSENC_REQUEST) and length == 8:
                if code in declined:
                    raise _Refused("repeated encryption request")
                declined.add(code)
                writer.write(b"N")
                await writer.drain()
                continue
            if code == _PG_CANCEL_REQUEST:
                raise _Refused("cancel requests are not relayed")
            if code >> 16 != 3:
                raise _Refused(
                    f"protocol {code >> 16}.{code & 0xFFFF}",
                    _pg_error("unsupported frontend protocol", code="0A000"),
                )
            params = _pg_startup_parameters(body[4:])
            if params is None:
                raise _Refused("malformed startup message", _pg_error("invalid startup"))
            user = params.get("user", "")
            if user != self.account:
                raise _Refused(f"as {_shown(user)}; only {self.account} may connect", _pg_error())
            database = params.get("database") or user
            if self.database is not None and database != self.database:
                raise _Refused(
                    f"to database {_shown(database)}; only {self.database} may be used",
                    _pg_error(f"secd: this run may connect only to database {self.database}"),
                )
            upstream = await self._open(connection)
            if upstream is None:
                raise _Refused("database unreachable", _pg_error("database unreachable", "08006"))
            upstream[1].write(length.to_bytes(4, "big") + body)
            return upstream

    # ------------------------------------------------------------------ MySQL

    async def _admit_mysql(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Pass on the server's greeting (no TLS, no compression); the response must be ours."""
        upstream = await self._open(connection)
        if upstream is None:
            return None
        up_reader, up_writer = upstream
        seq, greeting = await _my_read_packet(up_reader, _MY_MAX_GREETING)
        if greeting[:1] == b"\xff":
            # The server refused us (too many connections, host blocked): tell the client why.
            writer.write(_my_packet(seq, greeting))
            await writer.drain()
            return None
        greeting = _my_strip_capabilities(greeting)
        if greeting is None:
            raise _Refused("server greeting is not protocol 10")
        writer.write(_my_packet(seq, greeting))
        await writer.drain()
        seq, response = await _my_read_packet(reader, _MY_MAX_RESPONSE)
        reply_seq = (seq + 1) & 0xFF
        if len(response) < 32:
            raise _Refused("short handshake response", _my_error(reply_seq))
        capabilities = int.from_bytes(response[:4], "little")
        if capabilities & _MY_CLIENT_SSL:
            raise _Refused("TLS request", _my_error(reply_seq, "secd: TLS is not offered here"))
        if not capabilities & _MY_CLIENT_PROTOCOL_41:
            raise _Refused("pre-4.1 handshake", _my_error(reply_seq))
        if capabilities & (_MY_CLIENT_COMPRESS | _MY_CLIENT_ZSTD):
            raise _Refused("compression", _my_error(reply_seq, "secd: compression is not offered"))
        end = response.find(b"\0", 32)
        user = response[32:end] if end >= 0 else b""
        if end < 0 or user != self._account:
            shown = _shown(user.decode(errors="replace"))
            raise _Refused(f"as {shown}; only {self.account} may connect", _my_error(reply_seq))
        up_writer.write(_my_packet(seq, response))
        return upstream

    async def _pump_mysql_commands(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        connection: _Connection,
    ) -> None:
        """Copy client packets upstream, stopping any command that would change the user.

        A command starts with a packet of sequence 0 that does not continue a 16 MiB packet;
        the server reads commands by the same rule, so none can slip past unseen.
        """
        continuing = False
        try:
            while True:
                header = await reader.read(4)
                if not header:
                    break
                if len(header) < 4:
                    header += await reader.readexactly(4 - len(header))
                length, seq = int.from_bytes(header[:3], "little"), header[3]
                command = not continuing and seq == 0
                continuing = length == _MY_MAX_PACKET
                remaining = length
                if command and length:
                    first = await reader.readexactly(1)
                    remaining -= 1
                    if first[0] in (_MY_COM_CHANGE_USER, _MY_COM_MULTI):
                        rest = await reader.readexactly(min(remaining, 4096))
                        remaining -= len(rest)
                        if not self._may_change_user(first[0], rest):
                            client.write(_my_error(1))
                            with contextlib.suppress(OSError):
                                await asyncio.wait_for(client.drain(), 1.0)
                            connection.abort()
                            return
                        first += rest
                    header += first
                up_writer.write(header)
                while remaining:
                    data = await reader.read(min(remaining, _CHUNK))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(data)
                    up_writer.write(data)
                await up_writer.drain()
            if not up_writer.is_closing() and up_writer.can_write_eof():
                up_writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            connection.abort()

    # ------------------------------------------------------------------ Neo4j (Bolt)

    async def _admit_bolt(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Negotiate a plain Bolt version through the server, then check the client's HELLO."""
        handshake = await reader.readexactly(20)
        if handshake[:4] != _BOLT_MAGIC:
            raise _Refused("not a Bolt handshake")
        proposals = _bolt_plain_proposals(handshake[4:])
        if proposals is None:
            raise _Refused("no Bolt version 3 to 5 proposed", bytes(4))
        upstream = await self._open(connection)
        if upstream is None:
            return None
        up_reader, up_writer = upstream
        up_writer.write(_BOLT_MAGIC + proposals)
        chosen = await up_reader.readexactly(4)
        writer.write(chosen)
        await writer.drain()
        if chosen == bytes(4):
            return None
        major, minor = chosen[3], chosen[2]
        if not 3 <= major <= 5:
            raise _Refused(f"server chose Bolt {major}.{minor}, which was not offered")
        raw, message = await _bolt_read_message(reader, 65536)
        if not message or message[0] != _BOLT_HELLO:
            raise _Refused("first message is not HELLO", _bolt_failure())
        # Before 5.1 HELLO carries the credentials; from 5.1 on LOGON does (checked as it
        # passes), and a HELLO that carries any anyway is held to the same rule.
        extra = message[1] if len(message) > 1 and isinstance(message[1], dict) else {}
        if (major, minor) < (5, 1) or {"scheme", "principal", "credentials"} & extra.keys():
            self._check_auth(message)
        else:
            self._check_message(message)
        up_writer.write(raw)
        return upstream

    def _check_auth(self, message: tuple) -> None:
        """A HELLO or LOGON must log in with a password as the run's account."""
        auth = message[1] if len(message) > 1 and isinstance(message[1], dict) else {}
        principal = auth.get("principal")
        if auth.get("scheme") != "basic" or principal != self.account:
            shown = _shown(principal) if isinstance(principal, str) else repr(auth.get("scheme"))
            raise _Refused(f"as {shown}; only {self.account} may connect", _bolt_failure())
        self._check_message(message)

    def _check_message(self, message: tuple) -> None:
        """No message may act as another user (impersonation) or log in outside LOGON/HELLO."""
        for field in message[1:]:
            if isinstance(field, dict):
                if field.get("imp_user") is not None:
                    raise _Refused("impersonation", _bolt_failure())
                if message[0] not in (_BOLT_HELLO, _BOLT_LOGON) and "principal" in field:
                    raise _Refused("credentials outside a login", _bolt_failure())

    async def _pump_bolt_messages(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        connection: _Connection,
    ) -> None:
        """Copy client messages upstream whole, each one checked before it is passed on."""
        try:
            while True:
                try:
                    raw, message = await _bolt_read_message(reader, _BOLT_MAX_MESSAGE)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    break
                if message and message[0] in (_BOLT_HELLO, _BOLT_LOGON):
                    self._check_auth(message)
                elif message:
                    self._check_message(message)
                up_writer.write(raw)
                await up_writer.drain()
            if not up_writer.is_closing() and up_writer.can_write_eof():
                up_writer.write_eof()
        except _Refused as refused:
            log.warning("database relay %s: refused a message: %s", self.path, refused)
            client.write(refused.reply)
            with contextlib.suppress(OSError):
                await asyncio.wait_for(client.drain(), 1.0)
            connection.abort()
        except (OSError, asyncio.IncompleteReadError):
            connection.abort()

    def _may_change_user(self, command: int, body: bytes) -> bool:
        """Whether a COM_CHANGE_USER (or a COM_MULTI, never) keeps the run's account."""
        end = body.find(b"\0")
        user = body[:end] if end >= 0 else b""
        if command == _MY_COM_CHANGE_USER and end >= 0 and user == self._account:
            return True
        what = "COM_MULTI" if command == _MY_COM_MULTI else _shown(user.decode(errors="replace"))
        log.warning("database relay %s: refused a change of user to %s", self.path, what)
        return False

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


def _shown(name: str) -> str:
    """A client-chosen name made safe for one log line."""
    return ascii(name[:64])


def _pg_startup_parameters(data: bytes) -> dict[str, str] | None:
    """The key/value pairs of a StartupMessage body; None when malformed or a key repeats."""
    # The server insists on one final NUL after the pairs, and takes the last of repeated
    # keys: both are checked here so the relay and the server read the same user.
    if data == b"\0":
        return {}
    if not data.endswith(b"\0\0"):
        return None
    fields = data[:-2].split(b"\0")
    if len(fields) % 2:
        return None
    params: dict[str, str] = {}
    try:
        for key, value in zip(fields[::2], fields[1::2], strict=True):
            name = key.decode()
            if not name or name in params:
                return None
            params[name] = value.decode()
    except UnicodeDecodeError:
        return None
    return params


def _pg_error(message: str = REFUSAL, code: str = "28000") -> bytes:
    """A PostgreSQL ErrorResponse (FATAL), which clients show as the connection's error."""
    fields = b"".join(
        kind + text.encode() + b"\0"
        for kind, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + (len(body) + 4).to_bytes(4, "big") + body


async def _my_read_packet(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    """One MySQL packet (sequence id, payload) of at most `limit` bytes."""
    header = await reader.readexactly(4)
    length = int.from_bytes(header[:3], "little")
    if length > limit:
        raise _Refused(f"handshake packet of {length} bytes")
    return header[3], await reader.readexactly(length)


def _my_packet(seq: int, payload: bytes) -> bytes:
    """A MySQL packet: 3-byte little-endian length, sequence id, payload."""
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def _my_error(seq: int, message: str = REFUSAL) -> bytes:
    """A MySQL ERR packet: access denied (1045, SQLSTATE 28000) with `message`."""
    payload = b"\xff" + _MY_ER_ACCESS_DENIED.to_bytes(2, "little") + b"#28000" + message.encode()
    return _my_packet(seq, payload)


def _my_strip_capabilities(greeting: bytes) -> bytes | None:
    """The server's protocol-10 greeting without SSL or compression; None if it is not one."""
    if greeting[:1] != b"\x0a":
        return None
    version_end = greeting.find(b"\0", 1)
    if version_end < 0:
        return None
    # version NUL, connection id (4), first scramble part (8), filler (1), then capabilities.
    low = version_end + 1 + 4 + 8 + 1
    if len(greeting) < low + 2:
        return None
    out = bytearray(greeting)
    flags = int.from_bytes(out[low : low + 2], "little") & ~_MY_NO_PEEKING & 0xFFFF
    out[low : low + 2] = flags.to_bytes(2, "little")
    # Then charset (1) and status (2), and the upper half of the capabilities.
    high = low + 5
    if len(out) >= high + 2:
        flags = int.from_bytes(out[high : high + 2], "little") & ~(_MY_NO_PEEKING >> 16) & 0xFFFF
        out[high : high + 2] = flags.to_bytes(2, "little")
    return bytes(out)


def _bolt_plain_proposals(proposals: bytes) -> bytes | None:
    """The client's four version proposals with anything but Bolt 3 to 5 zeroed; None if empty."""
    # Each is (reserved, range, minor, major). Bolt 5.7's manifest (major 0xFF) and unknown
    # majors would change the framing that follows, so the server never sees them.
    out = bytearray(16)
    for i in range(0, 16, 4):
        if 3 <= proposals[i + 3] <= 5:
            out[i : i + 4] = proposals[i : i + 4]
    return bytes(out) if any(out) else None


async def _bolt_read_message(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, tuple]:
    """One Bolt message: its raw chunks and its decoded (signature, fields...); () for a NOOP."""
    raw = bytearray()
    data = bytearray()
    while True:
        header = await reader.readexactly(2)
        size = int.from_bytes(header, "big")
        raw += header
        if size == 0:
            break
        if len(data) + size > limit:
            raise _Refused(f"a Bolt message over {limit} bytes", _bolt_failure())
        chunk = await reader.readexactly(size)
        raw += chunk
        data += chunk
    if not data:
        return bytes(raw), ()
    try:
        value, end = _packstream(bytes(data), 0, 0)
    except (IndexError, ValueError, UnicodeDecodeError):
        raise _Refused("a malformed Bolt message", _bolt_failure()) from None
    if end != len(data) or not isinstance(value, _Struct):
        raise _Refused("a malformed Bolt message", _bolt_failure())
    return bytes(raw), (value.signature, *value.fields)


class _Struct:
    """A PackStream structure: a signature byte and its fields."""

    def __init__(self, signature: int, fields: list) -> None:
        self.signature = signature
        self.fields = fields


_PS_TINY = {0x80: "string", 0x90: "list", 0xA0: "map", 0xB0: "struct"}
_PS_SIZED = {
    0xD0: ("string", 1), 0xD1: ("string", 2), 0xD2: ("string", 4),
    0xD4: ("list", 1), 0xD5: ("list", 2), 0xD6: ("list", 4),
    0xD8: ("map", 1), 0xD9: ("map", 2), 0xDA: ("map", 4),
    0xCC: ("bytes", 1), 0xCD: ("bytes", 2), 0xCE: ("bytes", 4),
}  # fmt: skip


def _take(data: bytes, pos: int, size: int) -> bytes:
    """`size` bytes at `pos`, or IndexError when the message ends first."""
    if pos + size > len(data):
        raise IndexError("truncated value")
    return data[pos : pos + size]


def _packstream(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    """Decode one PackStream value at `pos`; IndexError/ValueError when it is not one."""
    if depth > 32:
        raise ValueError("nested too deeply")
    marker = _take(data, pos, 1)[0]
    pos += 1
    if marker < 0x80 or marker >= 0xF0:
        return (marker if marker < 0x80 else marker - 0x100), pos
    if marker == 0xC0:
        return None, pos
    if marker in (0xC2, 0xC3):
        return marker == 0xC3, pos
    if marker == 0xC1:
        return _take(data, pos, 8), pos + 8
    if 0xC8 <= marker <= 0xCB:
        width = 1 << (marker - 0xC8)
        return int.from_bytes(_take(data, pos, width), "big", signed=True), pos + width
    if marker & 0xF0 in _PS_TINY:
        kind, size = _PS_TINY[marker & 0xF0], marker & 0x0F
    elif marker in _PS_SIZED:
        kind, width = _PS_SIZED[marker]
        size = int.from_bytes(_take(data, pos, width), "big")
        pos += width
    else:
        raise ValueError(f"unknown PackStream marker {marker:#x}")
    if kind in ("string", "bytes"):
        value = _take(data, pos, size)
        return (value.decode() if kind == "string" else value), pos + size
    if kind == "struct":
        signature = _take(data, pos, 1)[0]
        pos += 1
    if size > len(data) - pos:
        raise IndexError("more elements than bytes")
    if kind in ("struct", "list"):
        items = []
        for _ in range(size):
            item, pos = _packstream(data, pos, depth + 1)
            items.append(item)
        return (_Struct(signature, items) if kind == "struct" else items), pos
    mapping: dict = {}
    for _ in range(size):
        key, pos = _packstream(data, pos, depth + 1)
        item, pos = _packstream(data, pos, depth + 1)
        if not isinstance(key, str) or key in mapping:
            # A repeated key could let the relay and the server read different principals.
            raise ValueError("map key is not a string, or repeats")
        mapping[key] = item
    return mapping, pos


def _bolt_failure(message: str = REFUSAL) -> bytes:
    """A Bolt FAILURE message (one chunk) that drivers raise as an authentication error."""
    body = (
        b"\xb1\x7f\xa2"
        + _pack_string("code")
        + _pack_string(_BOLT_UNAUTHORIZED)
        + _pack_string("message")
        + _pack_string(message)
    )
    return len(body).to_bytes(2, "big") + body + b"\x00\x00"


def _pack_string(text: str) -> bytes:
    """A PackStream string (short ones only: the relay's own messages)."""
    data = text.encode()
    if len(data) < 16:
        return bytes([0x80 | len(data)]) + data
    return b"\xd0" + bytes([len(data)]) + data
