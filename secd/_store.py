"""Cache entries on disk: one checksummed file per key, written atomically, evicted LRU first.

Layout under the cache directory::

    v1/<function>/<code key>/<argument key>.entry   the result
    v1/<function>/<code key>/<argument key>.lock    while one process computes it
    v1/.evict.lock                                   while one process evicts

An entry is a pickle (protocol 5) whose large buffers (numpy arrays, pandas blocks) are stored
out-of-band, each aligned to 64 bytes, so a hit maps the file and hands those bytes to numpy without
a copy. The header carries an xxh3-128 checksum of everything after it: a truncated or damaged
entry is found before it is used, and recomputed. A hit stamps the file's mtime itself (atime is
often off), and eviction removes the entries with the oldest stamps.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import pickle
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

__all__ = ["DamagedEntry", "EntryStore", "NotStorable"]

FORMAT = "v1"
ENTRY_SUFFIX = ".entry"
LOCK_SUFFIX = ".lock"
TMP_SUFFIX = ".tmp"
MAGIC = b"SECDC\x00\x01\n"
# magic, checksum, total size, buffer count, reserved, pickle offset, pickle length
_HEADER = struct.Struct("<8s16sQIIQQ")
_BUFFER = struct.Struct("<QQ")
_CHECKED_FROM = 24  # the checksum covers everything after itself, the rest of the header included
_ALIGN = 64
# Below this, reading the file is cheaper than mapping it.
_MAP_FROM = 1 << 20
# A writer that died leaves its temp file; one this old belongs to no live writer.
_STALE_TMP_S = 6 * 3600
_WRITE_CHUNK = 1 << 30


class DamagedEntry(Exception):
    """An entry file that is truncated, corrupt or unreadable; the reason says which."""


class NotStorable(Exception):
    """A result that cannot be cached (it cannot be pickled, or is larger than the cache)."""


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


_thread_locks: dict[str, list[Any]] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def _thread_lock(name: str) -> Iterator[None]:
    """Excludes threads of this process (flock on NFS is per process, not per open file)."""
    with _thread_locks_guard:
        slot = _thread_locks.setdefault(name, [threading.Lock(), 0])
        slot[1] += 1
    try:
        with slot[0]:
            yield
    finally:
        with _thread_locks_guard:
            slot[1] -= 1
            if slot[1] == 0:
                del _thread_locks[name]


class EntryStore:
    """The entries of one cache directory, kept under `max_bytes` in total."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.base = self.root / FORMAT
        self.max_bytes = max_bytes

    def entry_path(self, function: str, code_key: str, args_key: str) -> Path:
        """Where the entry for that function, code version and arguments lives."""
        return self.base / function / code_key / f"{args_key}{ENTRY_SUFFIX}"

    # -- reading ----------------------------------------------------------------------------

    def load(self, path: Path) -> tuple[bool, Any]:
        """(True, value) for a sound entry, (False, None) for none; raises DamagedEntry."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False, None
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER.size:
                raise DamagedEntry(f"it is {size} bytes, shorter than its header")
            if size >= _MAP_FROM:
                # A private mapping: arrays come back writable, and writes never reach the file.
                data: Any = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
            else:
                data = bytearray(size)
                with open(fd, "rb", buffering=0, closefd=False) as file:
                    got = file.readinto(data)
                if got != size:
                    raise DamagedEntry(f"it shrank while being read ({got} of {size} bytes)")
        finally:
            os.close(fd)
        value = _decode(memoryview(data), size)
        _stamp(path)
        return True, value

    # -- writing ----------------------------------------------------------------------------

    def save(self, path: Path, value: Any) -> int:
        """Write the entry atomically and evict beyond the limit; returns its size in bytes."""
        buffers: list[pickle.PickleBuffer] = []
        try:
            pickled = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
            try:
                raws = [buffer.raw() for buffer in buffers]
            except BufferError:  # a non-contiguous buffer: keep everything in-band
                pickled, raws = pickle.dumps(value, protocol=5), []
        except Exception as exc:
            raise NotStorable(f"it cannot be pickled ({type(exc).__name__}: {exc})") from None
        header_size = _aligned(_HEADER.size + _BUFFER.size * len(raws))
        offsets = []
        end = header_size + len(pickled)
        for raw in raws:
            start = _aligned(end)
            offsets.append(start)
            end = start + raw.nbytes
        if end > self.max_bytes:
            raise NotStorable(
                f"it takes {end} bytes, more than the cache's limit of {self.max_bytes} bytes"
            )
        header = bytearray(header_size)
        fields = (MAGIC, b"\0" * 16, end, len(raws), 0, header_size, len(pickled))
        _HEADER.pack_into(header, 0, *fields)
        for index, (offset, raw) in enumerate(zip(offsets, raws, strict=True)):
            _BUFFER.pack_into(header, _HEADER.size + index * _BUFFER.size, offset, raw.nbytes)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            checksum = xxhash.xxh3_128()
            written = 0

            def put(chunk: bytes | bytearray | memoryview) -> None:
                nonlocal written
                view = memoryview(chunk).cast("B")
                checksum.update(view[max(0, _CHECKED_FROM - written) :])
                for start in range(0, len(view), _WRITE_CHUNK):
                    part = view[start : start + _WRITE_CHUNK]
                    while part:
                        part = part[os.write(fd, part) :]
                written += len(view)

            put(header)
            put(pickled)
            for offset, raw in zip(offsets, raws, strict=True):
                put(bytes(offset - written))
                put(raw)
            os.pwrite(fd, checksum.digest(), 8)
            os.close(fd)
            fd = -1
            # No fsync: after a crash the checksum finds a half-written file and it is recomputed.
            os.replace(tmp, path)
            _stamp(path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.evict(keep=path)
        return end

    def discard(self, path: Path) -> None:
        """Remove an entry (a damaged one, before it is recomputed)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # -- one computer per key ---------------------------------------------------------------

    @contextlib.contextmanager
    def computing(self, path: Path) -> Iterator[None]:
        """Hold the key's lock: other processes and threads wait here until it is released."""
        lock_path = path.with_suffix(LOCK_SUFFIX)
        with _thread_lock(str(lock_path)):
            fd = self._acquire(lock_path)
            try:
                yield
            finally:
                # Removed while still held: a waiter then finds its file gone and retries.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)
                os.close(fd)

    @staticmethod
    def _acquire(lock_path: Path) -> int:
        while True:
            for attempt in range(5):
                try:
                    lock_path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    break
                except FileNotFoundError:  # the folder was evicted between mkdir and open
                    if attempt == 4:
                        raise
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (
                held.st_ino,
                held.st_dev,
            ):
                return fd
            os.close(fd)  # we locked a file the previous holder had already removed

    # -- eviction ---------------------------------------------------------------------------

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the total is within max_bytes."""
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.base / ".evict.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # another process is evicting right now
            return self._evict_locked(keep)
        finally:
            os.close(fd)

    def _evict_locked(self, keep: Path | None) -> list[Path]:
        entries: list[tuple[int, int, str]] = []
        total = 0
        now = time.time()
        for code_dir in self._code_dirs():
            try:
                listing = list(os.scandir(code_dir))
            except FileNotFoundError:
                continue
            for item in listing:
                try:
                    stat = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if item.name.endswith(ENTRY_SUFFIX):
                    entries.append((stat.st_mtime_ns, stat.st_size, item.path))
                    total += stat.st_size
                elif item.name.endswith(TMP_SUFFIX) and now - stat.st_mtime > _STALE_TMP_S:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.path)
        removed: list[Path] = []
        if total <= self.max_bytes:
            return removed
        keep_name = str(keep) if keep is not None else None
        for _, size, name in sorted(entries):
            if total <= self.max_bytes:
                break
            if name == keep_name:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
                removed.append(Path(name))
            total -= size
        for path in removed:
            # An empty code version folder goes too; a writer that just made it retries.
            with contextlib.suppress(OSError):
                path.parent.rmdir()
                path.parent.parent.rmdir()
        return removed

    def _code_dirs(self) -> Iterator[str]:
        try:
            functions = list(os.scandir(self.base))
        except FileNotFoundError:
            return
        for function in functions:
            if not function.is_dir(follow_symlinks=False):
                continue
            try:
                versions = list(os.scandir(function.path))
            except FileNotFoundError:
                continue
            for version in versions:
                if version.is_dir(follow_symlinks=False):
                    yield version.path

    def total_bytes(self) -> int:
        """The size of all entries, in bytes."""
        total = 0
        for code_dir in self._code_dirs():
            with contextlib.suppress(FileNotFoundError):
                for item in os.scandir(code_dir):
                    if item.name.endswith(ENTRY_SUFFIX):
                        with contextlib.suppress(FileNotFoundError):
                            total += item.stat(follow_symlinks=False).st_size
        return total


def _stamp(path: Path) -> None:
    """Record a use: the kernel's own timestamps are coarse (ticks), and atime is often off."""
    now = time.time_ns()
    with contextlib.suppress(OSError):  # a read-only cache still serves hits
        os.utime(path, ns=(now, now))


def _decode(view: memoryview, size: int) -> Any:
    try:
        magic, checksum, total, count, _, pickle_at, pickle_len = _HEADER.unpack_from(view)
    except struct.error as exc:
        raise DamagedEntry(f"its header is unreadable ({exc})") from None
    if magic != MAGIC:
        raise DamagedEntry("it is not a secd cache entry (wrong magic bytes)")
    if total != size:
        raise DamagedEntry(f"it is {size} bytes but its header says {total} (truncated?)")
    if xxhash.xxh3_128(view[_CHECKED_FROM:]).digest() != checksum:
        raise DamagedEntry("its checksum does not match its contents")
    table = view[_HEADER.size : _HEADER.size + count * _BUFFER.size]
    buffers = [view[start : start + length] for start, length in _BUFFER.iter_unpack(table)]
    try:
        # Only the researcher's own jobs write their cache (secd mounts one per researcher), and
        # unpickling runs inside that same researcher's job: it grants nothing new.
        pickled = view[pickle_at : pickle_at + pickle_len]
        return pickle.loads(pickled, buffers=buffers)  # noqa: S301
    except Exception as exc:
        raise DamagedEntry(f"it cannot be unpickled ({type(exc).__name__}: {exc})") from None
