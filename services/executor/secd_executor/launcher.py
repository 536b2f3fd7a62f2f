"""The sandbox's first step, as root: private mounts, limits, then the sandbox uid and bwrap.

Run by the executor as `python -I -S launcher.py <plan> <status fd>` (standard library only: it
starts on every run and must start fast, so the plan is marshal data, hex-encoded: json alone
would double its start-up time). In order:

1. a private mount namespace of its own (nothing it mounts is seen on the host);
2. each bind of the plan: the source is opened *in this namespace*, its trusted root as it is
   and every component below with O_NOFOLLOW, checked to be the very folder the executor
   prepared (device and inode), and bind-mounted through /proc/self/fd/N onto its placeholder,
   never by its path again: a job that swaps a folder for a link mid-way gains nothing;
3. joins the run's cgroups, sets its rlimits and CPU affinity;
4. drops to the run's uid and gid with no supplementary groups (which clears every capability);
5. execs bwrap, which builds the sandbox from the placeholders.

A failure before the exec is written, one line, to the status descriptor (never to the job's
log: it may name host paths); the descriptor closes on exec, so EOF there means bwrap started.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import stat
import sys
from typing import Any

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_RLIMITS = {
    "as": resource.RLIMIT_AS,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "core": resource.RLIMIT_CORE,
}


class LaunchError(Exception):
    """The sandbox cannot be set up; the message is for the executor's log and the run's reason."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(err)}")


def _open_source(bind: dict[str, Any]) -> int:
    """The bind's source, opened below its root without following a link."""
    parts = bind["relative"]
    if not parts:
        # An operator's path (the interpreter, the forwarder): trusted as configured.
        return os.open(bind["root"], os.O_PATH | os.O_CLOEXEC)
    fd = os.open(bind["root"], _DIR)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            if not (last and not bind["dir"]):
                flags |= os.O_DIRECTORY
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise LaunchError(f"the run's {bind['what']} is a link or missing") from exc
            os.close(fd)
            fd = child
        # O_PATH | O_NOFOLLOW opens a final link itself rather than failing: refuse it here.
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode) != bind["dir"]:
            raise LaunchError(f"the run's {bind['what']} is a link or not what it should be")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _bind(libc: ctypes.CDLL, bind: dict[str, Any]) -> None:
    fd = _open_source(bind)
    try:
        info = os.fstat(fd)
        expect = bind.get("expect")
        if expect is not None and [info.st_dev, info.st_ino] != list(expect):
            raise LaunchError(
                f"the run's {bind['what']} changed while the run was set up; it was not run"
            )
        source = f"/proc/self/fd/{fd}".encode()
        target = bind["placeholder"].encode()
        _check(libc.mount(source, target, None, _MS_BIND, None), f"bind {bind['what']}")
    finally:
        os.close(fd)


def launch(plan: dict[str, Any]) -> None:
    """Everything up to (and including) the exec of bwrap; raises LaunchError."""
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS), "unshare the mount namespace")
    # Private from the root down: nothing mounted here propagates back to the host.
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
    for bind in plan["binds"]:
        _bind(libc, bind)
    pid = str(os.getpid())
    for procs in plan["cgroup_procs"]:
        try:
            with open(procs, "w") as f:
                f.write(pid)
        except OSError as exc:
            raise LaunchError(f"cannot join cgroup {procs}: {exc.strerror}") from None
    for name, value in plan["rlimits"].items():
        resource.setrlimit(_RLIMITS[name], (value, value))
    if plan.get("cpus"):
        os.sched_setaffinity(0, plan["cpus"])
    uid = plan["uid"]
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    argv = plan["argv"]
    os.execve(argv[0], argv, os.environ)  # noqa: S606 - bwrap's argv, built by the executor


def main(argv: list[str]) -> int:
    """Run the plan given in argv[1] (marshal, hex); report failures on descriptor argv[2]."""
    status = int(argv[2])
    os.set_inheritable(status, False)
    try:
        # The executor (root) wrote the plan; nobody else can start us as root with one.
        launch(marshal.loads(bytes.fromhex(argv[1])))  # noqa: S302
    except (LaunchError, OSError, ValueError, KeyError) as exc:
        os.write(status, f"{exc}\n".encode(errors="replace")[:1000])
        return 125
    return 0  # not reached: launch() execs


if __name__ == "__main__":
    sys.exit(main(sys.argv))
