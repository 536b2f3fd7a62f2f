"""MySQL/MariaDB's handshake and commands, read so that only the run's account logs in.

The server speaks first, so the database is connected to, and its greeting is passed on with
the SSL and compression capabilities cleared (the relay must be able to read every later
packet). The client's HandshakeResponse41 must name the run's account before it is passed on;
otherwise the client gets ERR 1045 and the server gets nothing but a closed socket. Later
COM_CHANGE_USER commands must name the run's account too, and MariaDB's COM_MULTI is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from .base import CHUNK, REFUSAL, Connection, Dial, Refused, Stream, log, shown

__all__ = ["MySQLProtocol"]

# Capability bits, commands and limits.
_CLIENT_COMPRESS = 0x20
_CLIENT_PROTOCOL_41 = 0x200
_CLIENT_SSL = 0x800
_CLIENT_ZSTD = 1 << 26
_NO_PEEKING = _CLIENT_SSL | _CLIENT_COMPRESS | _CLIENT_ZSTD
_COM_CHANGE_USER = 0x11
_COM_MULTI = 0xFE  # MariaDB: several commands in one packet, which would hide a change of user
_MAX_GREETING = 16384
_MAX_RESPONSE = 65536
_MAX_PACKET = 0xFFFFFF
_ER_ACCESS_DENIED = 1045


class MySQLProtocol:
    """Admits a HandshakeResponse41 for `account` only, and no later change of user."""

    def __init__(self, *, path: Path, account: str, database: str | None = None) -> None:
        """The run's `account`; `database` is not checked (MySQL grants confine the account)."""
        self.path = path
        self.account = account
        self._account = account.encode()

    async def admit(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dial: Dial
    ) -> Stream | None:
        """Pass on the server's greeting (no TLS, no compression); the response must be ours."""
        upstream = await dial()
        if upstream is None:
            return None
        up_reader, up_writer = upstream
        seq, greeting = await read_packet(up_reader, _MAX_GREETING)
        if greeting[:1] == b"\xff":
            # The server refused us (too many connections, host blocked): tell the client why.
            writer.write(packet(seq, greeting))
            await writer.drain()
            return None
        plain = strip_capabilities(greeting)
        if plain is None:
            raise Refused("server greeting is not protocol 10")
        writer.write(packet(seq, plain))
        await writer.drain()
        seq, response = await read_packet(reader, _MAX_RESPONSE)
        reply_seq = (seq + 1) & 0xFF
        if len(response) < 32:
            raise Refused("short handshake response", error(reply_seq))
        capabilities = int.from_bytes(response[:4], "little")
        if capabilities & _CLIENT_SSL:
            raise Refused("TLS request", error(reply_seq, "secd: TLS is not offered here"))
        if not capabilities & _CLIENT_PROTOCOL_41:
            raise Refused("pre-4.1 handshake", error(reply_seq))
        if capabilities & (_CLIENT_COMPRESS | _CLIENT_ZSTD):
            raise Refused("compression", error(reply_seq, "secd: compression is not offered"))
        end = response.find(b"\0", 32)
        user = response[32:end] if end >= 0 else b""
        if end < 0 or user != self._account:
            name = shown(user.decode(errors="replace"))
            raise Refused(f"as {name}; only {self.account} may connect", error(reply_seq))
        up_writer.write(packet(seq, response))
        return upstream

    async def forward(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        connection: Connection,
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
                continuing = length == _MAX_PACKET
                remaining = length
                if command and length:
                    first = await reader.readexactly(1)
                    remaining -= 1
                    if first[0] in (_COM_CHANGE_USER, _COM_MULTI):
                        rest = await reader.readexactly(min(remaining, 4096))
                        remaining -= len(rest)
                        if not self._may_change_user(first[0], rest):
                            client.write(error(1))
                            with contextlib.suppress(OSError):
                                await asyncio.wait_for(client.drain(), 1.0)
                            connection.abort()
                            return
                        first += rest
                    header += first
                up_writer.write(header)
                while remaining:
                    data = await reader.read(min(remaining, CHUNK))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(data)
                    up_writer.write(data)
                await up_writer.drain()
            if not up_writer.is_closing() and up_writer.can_write_eof():
                up_writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            connection.abort()

    def _may_change_user(self, command: int, body: bytes) -> bool:
        """Whether a COM_CHANGE_USER (or a COM_MULTI, never) keeps the run's account."""
        end = body.find(b"\0")
        user = body[:end] if end >= 0 else b""
        if command == _COM_CHANGE_USER and end >= 0 and user == self._account:
            return True
        what = "COM_MULTI" if command == _COM_MULTI else shown(user.decode(errors="replace"))
        log.warning("database relay %s: refused a change of user to %s", self.path, what)
        return False


async def read_packet(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    """One MySQL packet (sequence id, payload) of at most `limit` bytes."""
    header = await reader.readexactly(4)
    length = int.from_bytes(header[:3], "little")
    if length > limit:
        raise Refused(f"handshake packet of {length} bytes")
    return header[3], await reader.readexactly(length)


def packet(seq: int, payload: bytes) -> bytes:
    """A MySQL packet: 3-byte little-endian length, sequence id, payload."""
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def error(seq: int, message: str = REFUSAL) -> bytes:
    """A MySQL ERR packet: access denied (1045, SQLSTATE 28000) with `message`."""
    payload = b"\xff" + _ER_ACCESS_DENIED.to_bytes(2, "little") + b"#28000" + message.encode()
    return packet(seq, payload)


def strip_capabilities(greeting: bytes) -> bytes | None:
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
    flags = int.from_bytes(out[low : low + 2], "little") & ~_NO_PEEKING & 0xFFFF
    out[low : low + 2] = flags.to_bytes(2, "little")
    # Then charset (1) and status (2), and the upper half of the capabilities.
    high = low + 5
    if len(out) >= high + 2:
        flags = int.from_bytes(out[high : high + 2], "little") & ~(_NO_PEEKING >> 16) & 0xFFFF
        out[high : high + 2] = flags.to_bytes(2, "little")
    return bytes(out)
