"""A small threaded HTTP server for fakes: JSON in and out, every request recorded."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeHTTPServer", "Recorded", "Reply", "Request"]


@dataclass(frozen=True)
class Recorded:
    """One request as the fake saw it: the method, the raw target (path and query), the headers."""

    method: str
    target: str
    headers: dict[str, str]


@dataclass
class Request:
    """What a route handler gets."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or form fields (first values) if it is a form."""
        kind = self.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in kind:
            return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}
        return json.loads(self.body or b"{}")

    def arg(self, name: str, default: str | None = None) -> str | None:
        """A query parameter's first value."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Reply:
    """What a route handler returns."""

    status: int
    body: bytes = b""
    headers: dict[str, str] | None = None

    @classmethod
    def json(cls, status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
        """A JSON reply."""
        return cls(
            status,
            json.dumps(data).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )


class FakeHTTPServer:
    """Serves `handle(Request) -> Reply` on 127.0.0.1 in a thread; records every request."""

    def __init__(self) -> None:
        """Not listening until start()."""
        self.requests: list[Recorded] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:40123."""
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def handle(self, request: Request) -> Reply:  # pragma: no cover - overridden
        """Answer one request."""
        return Reply.json(404, {"message": "404 Not Found"})

    def start(self) -> FakeHTTPServer:
        """Listen on a free port."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            """One connection: every request goes to the fake's handle()."""

            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, keep-alive clients wait
            # for the delayed ACK (40 ms) on every request.
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                """Quiet: the fake records requests itself."""
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _serve(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append(Recorded(self.command, self.path, headers))
                parts = urlsplit(self.path)
                request = Request(
                    self.command, parts.path, parse_qs(parts.query), headers, self._body()
                )
                try:
                    reply = fake.handle(request)
                except Exception as exc:  # a bug in the fake: say so, like a 500 would
                    reply = Reply.json(500, {"message": f"fake failed: {exc!r}"})
                self.send_response(reply.status)
                for name, value in (reply.headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
