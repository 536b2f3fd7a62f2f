"""The sandbox, tested with real bwrap and real processes: what a job can and cannot do."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secd_executor import forwarder
from secd_executor.relay import DatabaseRelay
from secd_executor.sandbox import SandboxSpec, run_sandboxed
from secd_shared.tail import log_tail

from .conftest import PG_CLIENT_SOURCE, SANDBOX_UID, Jobs, host_cmdlines, wait_for


def _base_prefix(env_dir: Path) -> str:
    """The base Python installation the venv points to, as the sandbox mounts it."""
    for line in (env_dir / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return str(Path(value.strip()).resolve().parent)
    raise AssertionError("no home in pyvenv.cfg")


async def test_job_sees_its_environment_and_nothing_else(jobs: Jobs, run_env: Path) -> None:
    os.environ["SECD_TEST_HOST_ONLY"] = "leak"
    try:
        run = await jobs.run(
            """
            import json, os, shutil, sys
            status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines())
            json.dump({
                "env": dict(os.environ),
                "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "caps": {k: status[k].strip() for k in status if k.startswith("Cap")},
                "no_new_privs": status["NoNewPrivs"].strip(),
                "python": shutil.which("python"), "prefix": sys.prefix,
                "cwd": os.getcwd(),
                "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                "stdin": os.readlink("/proc/self/fd/0"),
                "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                "etc": sorted(os.listdir("/etc")),
                "user": __import__("pwd").getpwuid(os.getuid()).pw_name,
            }, open(os.environ["OUTPUT_PATH"] + "/info.json", "w"))
            """,
            environment={"DB_USER": "run_42", "DB_PASS": "hunter2"},
        )
    finally:
        del os.environ["SECD_TEST_HOST_ONLY"]
    assert run.result.exit_code == 0, run.log
    info = json.loads((run.output / "info.json").read_text())
    env = info["env"]
    assert env["OUTPUT_PATH"] == "/output"
    assert env["SECD"] == "PRODUCTION"
    assert env["DB_USER"] == "run_42" and env["DB_PASS"] == "hunter2"
    assert env["HOME"] == "/tmp"
    assert env["PATH"].split(":")[0] == f"{run_env}/bin"
    fixed = {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "OUTPUT_PATH", "SECD", "PWD"}
    assert set(env) <= fixed | {"DB_USER", "DB_PASS"}
    assert (info["uid"], info["gid"], info["groups"]) == (SANDBOX_UID, SANDBOX_UID, [])
    assert set(info["caps"].values()) == {"0000000000000000"}
    assert info["no_new_privs"] == "1"
    assert info["python"] == f"{run_env}/bin/python"
    assert info["prefix"] == str(run_env)
    assert info["cwd"] == "/job"
    # 0-2 plus the descriptor listdir itself holds: no host directory handle leaks in.
    assert info["fds"][:3] == [0, 1, 2] and len(info["fds"]) <= 4
    assert info["stdin"] == "/dev/null"
    assert len(info["pids"]) <= 2, "the job must see only its own pid namespace"
    assert "mysql" not in info["etc"] and "pip.conf" not in info["etc"]
    assert info["user"] == "secd"


async def test_secret_is_in_no_cmdline(jobs: Jobs, unix_listener: Path) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    spec = jobs.spec(
        """
        import json, os, pathlib, time
        secret = os.environ["DB_PASS"].encode()
        hits = []
        for p in pathlib.Path("/proc").iterdir():
            if p.name.isdigit():
                if secret in (p / "cmdline").read_bytes():
                    hits.append(p.name)
        json.dump({"hits": hits}, open("/output/inside.json", "w"))
        for _ in range(2000):
            if os.path.exists("/cache/go"):
                break
            time.sleep(0.01)
        """,
        environment={"DB_PASS": secret},
        # With the forwarder in front, its argv is in /proc too.
        db_socket=unix_listener,
        db_port=5432,
    )
    task = asyncio.create_task(run_sandboxed(spec, jobs.log_path))
    try:
        inside = jobs.root / "output/inside.json"
        await asyncio.to_thread(wait_for, lambda: inside.exists() or task.done())
        outside = [pid for pid, cmdline in host_cmdlines() if secret.encode() in cmdline]
    finally:
        (jobs.root / "cache/go").touch()
        result = await task
    assert result.exit_code == 0, jobs.log_path.read_text()
    assert json.loads((jobs.root / "output/inside.json").read_text()) == {"hits": []}
    assert outside == []


async def test_no_network(jobs: Jobs) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        run = await jobs.run(
            f"""
            import json, socket
            def attempt(f):
                try:
                    f()
                    return "ok"
                except OSError as e:
                    return type(e).__name__
            udp = socket.socket(type=socket.SOCK_DGRAM)
            def tcp(host, port):
                with socket.create_connection((host, port), timeout=3):
                    pass
            json.dump({{
                "host_listener": attempt(lambda: tcp("127.0.0.1", {port})),
                "resolve": attempt(lambda: socket.getaddrinfo("pypi.org", 443)),
                "internet": attempt(lambda: tcp("1.1.1.1", 443)),
                "udp": attempt(lambda: udp.sendto(b"x", ("8.8.8.8", 53))),
                "interfaces": [name for _, name in socket.if_nameindex()],
            }}, open("/output/net.json", "w"))
            """
        )
        with pytest.raises(BlockingIOError):
            server.accept()
    assert run.result.exit_code == 0, run.log
    net = json.loads((run.output / "net.json").read_text())
    assert net["host_listener"] == "ConnectionRefusedError"
    assert net["resolve"] == "gaierror"
    assert net["internet"] != "ok"
    assert net["udp"] != "ok"
    assert net["interfaces"] == ["lo"]


async def test_filesystem_is_read_only_except_output_cache_and_tmp(
    jobs: Jobs, run_env: Path
) -> None:
    token = secrets.token_hex(6)
    host_canary = Path(f"/tmp/secd-host-canary-{token}")
    host_canary.write_text("host")
    try:
        run = await jobs.run(
            f"""
            import json, os
            def write(path):
                try:
                    with open(path, "w") as f:
                        f.write("x")
                    return "ok"
                except OSError as e:
                    return type(e).__name__
            targets = ["/job/x", "/etc/x", "/etc/passwd", "/usr/x", "/usr/bin/x", "/x",
                       "/run/x", "{run_env}/x", "{run_env}/bin/x", "{_base_prefix(run_env)}/x",
                       "/proc/sys/kernel/hostname", "/output/out.txt", "/data/cached.txt",
                       "/tmp/secd-job-tmp-{token}"]
            result = {{t: write(t) for t in targets}}
            result["host_canary_visible"] = os.path.exists("{host_canary}")
            json.dump(result, open("/output/fs.json", "w"))
            """,
            mount_path="/data",
        )
    finally:
        host_canary.unlink()
    assert run.result.exit_code == 0, run.log
    fs = json.loads((run.output / "fs.json").read_text())
    writable = {"/output/out.txt", "/data/cached.txt", f"/tmp/secd-job-tmp-{token}"}
    for target, outcome in fs.items():
        if target in writable:
            assert outcome == "ok", target
        elif target != "host_canary_visible":
            assert outcome in ("OSError", "PermissionError", "FileNotFoundError"), target
    assert fs["host_canary_visible"] is False
    assert not Path(f"/tmp/secd-job-tmp-{token}").exists()
    assert (run.cache / "cached.txt").read_text() == "x"
    out = run.output / "out.txt"
    assert out.read_text() == "x" and out.stat().st_uid == SANDBOX_UID
    assert not (jobs.root / "src/x").exists()
    assert not (run_env / "x").exists()


def _no_process_with(marker: str) -> bool:
    return not any(marker.encode() in cmdline for _, cmdline in host_cmdlines())


_SPAWNS_SLEEPER = """
    import os, subprocess, time
    # A new session must not help a child outlive the sandbox.
    subprocess.Popen(["sleep", os.environ["MARKER"]], start_new_session=True)
    print("started", flush=True)
    time.sleep(120)
"""


async def test_timeout_kills_job_and_children(jobs: Jobs) -> None:
    marker = f"1000.{secrets.randbelow(10**9)}"
    run = await jobs.run(_SPAWNS_SLEEPER, timeout_s=1.0, environment={"MARKER": marker})
    assert "started" in run.log
    assert run.result.timed_out is True
    assert run.result.exit_code == -9
    assert 1.0 <= run.result.duration_s < 10
    await asyncio.to_thread(wait_for, lambda: _no_process_with(marker), 5)


async def test_cancel_kills_job_and_children(jobs: Jobs) -> None:
    marker = f"1000.{secrets.randbelow(10**9)}"
    spec = jobs.spec(_SPAWNS_SLEEPER, environment={"MARKER": marker})
    task = asyncio.create_task(run_sandboxed(spec, jobs.log_path))
    log = jobs.log_path
    await asyncio.to_thread(
        wait_for, lambda: task.done() or (log.exists() and "started" in log.read_text())
    )
    assert not _no_process_with(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(wait_for, lambda: _no_process_with(marker), 5)


async def test_job_ending_takes_its_background_processes_along(jobs: Jobs) -> None:
    marker = f"1000.{secrets.randbelow(10**9)}"
    started = time.monotonic()
    run = await jobs.run(
        """
        import os, subprocess, sys
        subprocess.Popen(["sleep", os.environ["MARKER"]], start_new_session=True)
        sys.exit(5)
        """,
        environment={"MARKER": marker},
    )
    assert run.result.exit_code == 5 and not run.result.timed_out
    assert time.monotonic() - started < 10
    await asyncio.to_thread(wait_for, lambda: _no_process_with(marker), 5)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("pass", 0),
        ("raise SystemExit(3)", 3),
        ("raise SystemExit(255)", 255),
        ("raise RuntimeError('boom')", 1),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + 15),
    ],
)
async def test_exit_code_passes_through(jobs: Jobs, code: str, expected: int) -> None:
    run = await jobs.run(code)
    assert run.result.exit_code == expected, run.log
    assert run.result.timed_out is False


async def test_missing_command_fails_with_a_message(jobs: Jobs) -> None:
    run = await jobs.run("", command=["no-such-program"])
    assert run.result.exit_code != 0
    assert "no-such-program" in run.log


async def test_stdout_and_stderr_share_the_log_in_order(jobs: Jobs) -> None:
    jobs.log_path.write_text("header written by the executor\n")
    run = await jobs.run(
        """
        import sys
        for i in range(50):
            print(f"out {i}")
            print(f"err {i}", file=sys.stderr)
        """
    )
    assert run.result.exit_code == 0
    expected = ["header written by the executor"]
    for i in range(50):
        expected += [f"out {i}", f"err {i}"]
    assert run.log.splitlines() == expected
    assert log_tail(jobs.log_path, 3) == "err 48\nout 49\nerr 49"


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert log_tail(log) == ""
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(10000)) + b"bad \xff end")
    assert log_tail(log, 2) == "line 9999\nbad \ufffd end"
    assert log_tail(log, 0) == ""
    assert log_tail(log, 20000).count("\n") == 10000


async def test_forwarder_reaches_postgres_through_the_relay(
    jobs: Jobs, postgres: tuple[str, int], tmp_path: Path
) -> None:
    relay = DatabaseRelay(
        tmp_path / "relay" / "db.sock",
        account="postgres",
        kind="postgres",
        host=postgres[0],
        port=postgres[1],
    )
    await relay.start()
    spec = jobs.spec(
        PG_CLIENT_SOURCE
        + """
import os, socket, time
# Connect at once: the forwarder must already be listening when the job starts.
sock = socket.create_connection(("127.0.0.1", 5432), timeout=10)
print("RESULT", pg_select_one(sock), flush=True)
open("/output/connected", "w").close()
sock.settimeout(20)
try:
    data = sock.recv(1)
except OSError as e:
    data = type(e).__name__
print("AFTER CLOSE", repr(data), flush=True)
""",
        db_socket=relay.path,
        db_port=5432,
    )
    task = asyncio.create_task(run_sandboxed(spec, jobs.log_path))
    try:
        connected = jobs.root / "output/connected"
        await asyncio.to_thread(wait_for, lambda: connected.exists() or task.done())
    finally:
        await relay.close()
    result = await asyncio.wait_for(task, 30)
    log = jobs.log_path.read_text()
    assert result.exit_code == 0, log
    assert "RESULT 1\n" in log
    assert "AFTER CLOSE b''" in log or "AFTER CLOSE 'ConnectionResetError'" in log
    assert "secd-forwarder" not in log


def test_forwarder_reports_a_missing_socket(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.sock")
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            forwarder.__file__,
            "--port",
            "1",
            "--socket",
            gone,
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 70
    assert proc.stdout == ""
    assert proc.stderr.startswith("secd-forwarder: database socket")
    assert "is missing" in proc.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        {"environment": {"PATH": "/evil"}},
        {"environment": {"SECD": "TEST"}},
        {"environment": {"LD_PRELOAD": "/work/evil.so"}},
        {"environment": {"GCONV_PATH": "/work"}},
        {"environment": {"BAD-NAME": "x"}},
        {"mount_path": "/job/cache"},
        {"mount_path": "/"},
        {"mount_path": "relative"},
        {"command": []},
        {"db_port": 5432},
    ],
)
async def test_bad_specs_are_refused(jobs: Jobs, overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        await run_sandboxed(jobs.spec("", **overrides), jobs.log_path)


async def test_env_inside_a_remapped_path_is_refused(jobs: Jobs, tmp_path: Path) -> None:
    spec = jobs.spec("")
    bad = SandboxSpec(**{**spec.__dict__, "mount_path": str(jobs.env_dir.parent)})
    with pytest.raises(ValueError, match="collides"):
        await run_sandboxed(bad, jobs.log_path)
