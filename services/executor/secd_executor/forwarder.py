"""Runs inside the sandbox: relay 127.0.0.1:PORT to the database socket, then become the job.

Usage: python -I -S forwarder.py --port PORT --socket PATH -- COMMAND [ARG...]

Stdlib only: it runs with the run environment's interpreter in isolated mode, so nothing the
researcher installed is imported. The listening socket is bound before the job starts, so the
job may connect at once; the relay loop lives in a detached grandchild (reparented to the
sandbox's init) and the job's command replaces this process, keeping its pid, exit status and
signals exactly as if it had been started directly.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading

_PREFIX = "secd-forwarder:"
_CHUNK = 65536


def _fail(message: str, code: int) -> None:
    """Print one clear line to stderr and exit; the only output the job's log ever gets from us."""
    print(f"{_PREFIX} {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _parse(argv: list[str]) -> tuple[int, str, list[str]]:
    """Parse `--port N --socket PATH -- COMMAND...`; argparse would misread the job's own flags."""
    if "--" not in argv:
        _fail("usage: forwarder.py --port PORT --socket PATH -- COMMAND...", 2)
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1 :]
    values = dict(zip(opts[::2], opts[1::2], strict=False))
    if len(opts) != 4 or set(values) != {"--port", "--socket"} or not command:
        _fail("usage: forwarder.py --port PORT --socket PATH -- COMMAND...", 2)
    try:
        port = int(values["--port"])
    except ValueError:
        _fail(f"bad port {values['--port']!r}", 2)
    return port, values["--socket"], command


def _pump(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
    """Copy src to dst until EOF, pass the EOF on, and close both once both directions end."""
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
        # Half-close keeps protocols that finish with a client EOF working.
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # A reset on one side must tear down the other side at once.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    try:
        done.wait()
    except threading.BrokenBarrierError:
        pass
    finally:
        src.close()


def _serve(listener: socket.socket, socket_path: str) -> None:
    """Accept forever; one upstream Unix connection and two pump threads per client."""
    warned = False
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(socket_path)
        except OSError as exc:
            if not warned:
                print(f"{_PREFIX} database unreachable: {exc}", file=sys.stderr, flush=True)
                warned = True
            client.close()
            upstream.close()
            continue
        done = threading.Barrier(2)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b, done), daemon=True).start()


def _detach_relay(listener: socket.socket, socket_path: str) -> None:
    """Double-fork so the relay is not the job's child (a job's os.wait() must never reap it)."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            try:
                _serve(listener, socket_path)
            except BaseException as exc:
                # One line in the job's log, never a traceback it could mistake for its own.
                print(f"{_PREFIX} relay stopped: {exc!r}", file=sys.stderr, flush=True)
    finally:
        os._exit(0)


def main(argv: list[str]) -> None:
    """Check the socket, listen, start the relay, then exec the job's command."""
    port, socket_path, command = _parse(argv)
    try:
        is_socket = stat.S_ISSOCK(os.stat(socket_path).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        _fail(f"database socket {socket_path} is missing; the database is not available", 70)
    try:
        listener = socket.create_server(("127.0.0.1", port), backlog=128)
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{port}: {exc}", 70)
    _detach_relay(listener, socket_path)
    # Python sockets are non-inheritable, but close it anyway: the job must not hold the listener.
    listener.close()
    try:
        os.execvp(command[0], command)  # noqa: S606 - becoming the job is the point
    except OSError as exc:
        _fail(f"cannot run {command[0]}: {exc.strerror}", 127)


if __name__ == "__main__":
    main(sys.argv[1:])
