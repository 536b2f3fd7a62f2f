"""A uid per run, from the site's range, held for as long as the run lives.

Two runs never share a uid, so they share no files, no processes (a job cannot signal or ptrace
another's) and no per-uid process limit (RLIMIT_NPROC counts per uid). A uid is held with an
flock on a file of its own in the executor's lock folder: the kernel drops it when the executor
ends, however it ends, and executors on one machine that share the folder never pick the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UidLease", "UidPool", "UidsExhausted"]


class UidsExhausted(RuntimeError):
    """Every uid of the range is held by a running run."""


@dataclass
class UidLease:
    """A uid held for one run; release() (or the executor's end) frees it."""

    uid: int
    _fd: int

    def release(self) -> None:
        """Free the uid; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class UidPool:
    """The uids [first, first + count), leased through lock files in `lock_dir`."""

    def __init__(self, first: int, count: int, lock_dir: Path) -> None:
        self.first = first
        self.count = count
        self.lock_dir = Path(lock_dir)

    def _try(self, uid: int) -> UidLease | None:
        fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return UidLease(uid, fd)

    def lease(self, run_id: str) -> UidLease:
        """A free uid for `run_id`; the search starts at a place the run id picks."""
        self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        start = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "big") % self.count
        for step in range(self.count):
            lease = self._try(self.first + (start + step) % self.count)
            if lease is not None:
                return lease
        raise UidsExhausted(
            f"all {self.count} sandbox uids are in use; raise executor.uid_count or wait"
        )

    async def lease_async(self, run_id: str) -> UidLease:
        """lease() off the event loop (the search may touch many lock files)."""
        return await asyncio.to_thread(self.lease, run_id)


@contextlib.contextmanager
def held(lease: UidLease) -> Iterator[UidLease]:
    """Release the lease when the block ends."""
    try:
        yield lease
    finally:
        lease.release()
