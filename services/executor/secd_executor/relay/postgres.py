"""PostgreSQL's startup, read before the server sees anything: only the run's account and database.

The client speaks first. SSLRequest and GSSENCRequest are answered 'N' (the hop is local and the
sandbox has no network, so TLS would protect nothing), a CancelRequest is closed, and the
StartupMessage must name the run's account (and, when given, the run's database). Only then is
the database connected to and the StartupMessage passed on; a refused client gets a FATAL 28000
ErrorResponse and the server never sees it. After that, bytes pass unread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from .base import REFUSAL, Connection, Dial, Refused, Stream, pump, shown

__all__ = ["PostgresProtocol"]

# Request codes in the first message, and the server's own startup-size cap.
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP = 10000


class PostgresProtocol:
    """Admits a StartupMessage for `account` (and `database`, when given) only."""

    def __init__(self, *, path: Path, account: str, database: str | None = None) -> None:
        """The run's `account`, and the only database it may name (None: any)."""
        self.path = path
        self.account = account
        self.database = database

    async def admit(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dial: Dial
    ) -> Stream | None:
        """Read the client's first messages; connect upstream only for the run's account."""
        declined: set[int] = set()
        while True:
            length = int.from_bytes(await reader.readexactly(4), "big")
            if not 8 <= length <= _MAX_STARTUP:
                raise Refused(f"startup message of {length} bytes", error("invalid startup"))
            body = await reader.readexactly(length - 4)
            code = int.from_bytes(body[:4], "big")
            if code in (_SSL_REQUEST, _GSSENC_REQUEST) and length == 8:
                if code in declined:
                    raise Refused("repeated encryption request")
                declined.add(code)
                writer.write(b"N")
                await writer.drain()
                continue
            if code == _CANCEL_REQUEST:
                raise Refused("cancel requests are not relayed")
            if code >> 16 != 3:
                raise Refused(
                    f"protocol {code >> 16}.{code & 0xFFFF}",
                    error("unsupported frontend protocol", code="0A000"),
                )
            params = startup_parameters(body[4:])
            if params is None:
                raise Refused("malformed startup message", error("invalid startup"))
            user = params.get("user", "")
            if user != self.account:
                raise Refused(f"as {shown(user)}; only {self.account} may connect", error())
            database = params.get("database") or user
            if self.database is not None and database != self.database:
                raise Refused(
                    f"to database {shown(database)}; only {self.database} may be used",
                    error(f"secd: this run may connect only to database {self.database}"),
                )
            upstream = await dial()
            if upstream is None:
                raise Refused("database unreachable", error("database unreachable", "08006"))
            upstream[1].write(length.to_bytes(4, "big") + body)
            return upstream

    async def forward(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        connection: Connection,
    ) -> None:
        """Copy the client's bytes as they come: after the startup nothing changes the user."""
        await pump(reader, up_writer, connection)


def startup_parameters(data: bytes) -> dict[str, str] | None:
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


def error(message: str = REFUSAL, code: str = "28000") -> bytes:
    """A PostgreSQL ErrorResponse (FATAL), which clients show as the connection's error."""
    fields = b"".join(
        kind + text.encode() + b"\0"
        for kind, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + (len(body) + 4).to_bytes(4, "big") + body
