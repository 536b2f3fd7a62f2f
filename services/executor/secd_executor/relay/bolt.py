"""Neo4j's Bolt, read message by message so that only the run's account logs in.

The client's handshake must be Bolt's, and only plain versions 3 to 5 are offered to the server
(not the version-negotiation manifest of Bolt 5.7+). Every client message is then read whole
(PackStream): a HELLO or LOGON must carry the basic scheme and the run's account as principal,
and no message may impersonate another user (`imp_user`). A refused client gets a FAILURE
(Neo.ClientError.Security.Unauthorized) and the server never receives the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from .base import REFUSAL, Connection, Dial, Refused, Stream, log, shown

__all__ = ["BoltProtocol"]

# The handshake, message signatures, and the largest message read whole.
_MAGIC = b"\x60\x60\xb0\x17"
_HELLO = 0x01
_LOGON = 0x6A
_MAX_MESSAGE = 16 * 1024 * 1024
_UNAUTHORIZED = "Neo.ClientError.Security.Unauthorized"


class BoltProtocol:
    """Admits a Bolt 3 to 5 login as `account` only, and no later login or impersonation."""

    def __init__(self, *, path: Path, account: str, database: str | None = None) -> None:
        """The run's `account`; `database` is not checked (the account's roles decide)."""
        self.path = path
        self.account = account

    async def admit(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dial: Dial
    ) -> Stream | None:
        """Negotiate a plain Bolt version through the server, then check the client's HELLO."""
        handshake = await reader.readexactly(20)
        if handshake[:4] != _MAGIC:
            raise Refused("not a Bolt handshake")
        proposals = plain_proposals(handshake[4:])
        if proposals is None:
            raise Refused("no Bolt version 3 to 5 proposed", bytes(4))
        upstream = await dial()
        if upstream is None:
            return None
        up_reader, up_writer = upstream
        up_writer.write(_MAGIC + proposals)
        chosen = await up_reader.readexactly(4)
        writer.write(chosen)
        await writer.drain()
        if chosen == bytes(4):
            return None
        major, minor = chosen[3], chosen[2]
        if not 3 <= major <= 5:
            raise Refused(f"server chose Bolt {major}.{minor}, which was not offered")
        raw, message = await read_message(reader, 65536)
        if not message or message[0] != _HELLO:
            raise Refused("first message is not HELLO", failure())
        # Before 5.1 HELLO carries the credentials; from 5.1 on LOGON does (checked as it
        # passes), and a HELLO that carries any anyway is held to the same rule.
        extra = message[1] if len(message) > 1 and isinstance(message[1], dict) else {}
        if (major, minor) < (5, 1) or {"scheme", "principal", "credentials"} & extra.keys():
            self._check_auth(message)
        else:
            self._check_message(message)
        up_writer.write(raw)
        return upstream

    async def forward(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        connection: Connection,
    ) -> None:
        """Copy client messages upstream whole, each one checked before it is passed on."""
        try:
            while True:
                try:
                    raw, message = await read_message(reader, _MAX_MESSAGE)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    break
                if message and message[0] in (_HELLO, _LOGON):
                    self._check_auth(message)
                elif message:
                    self._check_message(message)
                up_writer.write(raw)
                await up_writer.drain()
            if not up_writer.is_closing() and up_writer.can_write_eof():
                up_writer.write_eof()
        except Refused as refused:
            log.warning("database relay %s: refused a message: %s", self.path, refused)
            client.write(refused.reply)
            with contextlib.suppress(OSError):
                await asyncio.wait_for(client.drain(), 1.0)
            connection.abort()
        except (OSError, asyncio.IncompleteReadError):
            connection.abort()

    def _check_auth(self, message: tuple[Any, ...]) -> None:
        """A HELLO or LOGON must log in with a password as the run's account."""
        auth = message[1] if len(message) > 1 and isinstance(message[1], dict) else {}
        principal = auth.get("principal")
        if auth.get("scheme") != "basic" or principal != self.account:
            name = shown(principal) if isinstance(principal, str) else repr(auth.get("scheme"))
            raise Refused(f"as {name}; only {self.account} may connect", failure())
        self._check_message(message)

    def _check_message(self, message: tuple[Any, ...]) -> None:
        """No message may act as another user (impersonation) or log in outside LOGON/HELLO."""
        for field in message[1:]:
            if isinstance(field, dict):
                if field.get("imp_user") is not None:
                    raise Refused("impersonation", failure())
                if message[0] not in (_HELLO, _LOGON) and "principal" in field:
                    raise Refused("credentials outside a login", failure())


def plain_proposals(proposals: bytes) -> bytes | None:
    """The client's four version proposals with anything but Bolt 3 to 5 zeroed; None if empty."""
    # Each is (reserved, range, minor, major). Bolt 5.7's manifest (major 0xFF) and unknown
    # majors would change the framing that follows, so the server never sees them.
    out = bytearray(16)
    for i in range(0, 16, 4):
        if 3 <= proposals[i + 3] <= 5:
            out[i : i + 4] = proposals[i : i + 4]
    return bytes(out) if any(out) else None


async def read_message(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, tuple[Any, ...]]:
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
            raise Refused(f"a Bolt message over {limit} bytes", failure())
        chunk = await reader.readexactly(size)
        raw += chunk
        data += chunk
    if not data:
        return bytes(raw), ()
    try:
        value, end = _packstream(bytes(data), 0, 0)
    except (IndexError, ValueError, UnicodeDecodeError):
        raise Refused("a malformed Bolt message", failure()) from None
    if end != len(data) or not isinstance(value, _Struct):
        raise Refused("a malformed Bolt message", failure())
    return bytes(raw), (value.signature, *value.fields)


class _Struct:
    """A PackStream structure: a signature byte and its fields."""

    def __init__(self, signature: int, fields: list[Any]) -> None:
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
    mapping: dict[str, Any] = {}
    for _ in range(size):
        key, pos = _packstream(data, pos, depth + 1)
        item, pos = _packstream(data, pos, depth + 1)
        if not isinstance(key, str) or key in mapping:
            # A repeated key could let the relay and the server read different principals.
            raise ValueError("map key is not a string, or repeats")
        mapping[key] = item
    return mapping, pos


def failure(message: str = REFUSAL) -> bytes:
    """A Bolt FAILURE message (one chunk) that drivers raise as an authentication error."""
    body = (
        b"\xb1\x7f\xa2"
        + _pack_string("code")
        + _pack_string(_UNAUTHORIZED)
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
