"""Paths a researcher can influence, opened without ever following a link.

A job owns its output and cache folders and can put symbolic links anywhere in them, and swap a
folder for a link while secd works (a rename is atomic). So secd, running as root outside the
sandbox, never hands such a path to a call that resolves it by name twice: it opens the trusted
root once, then each component below it with `O_NOFOLLOW`, and works through the descriptor
from then on (fchown, fstat, reads relative to it, bind mounts of /proc/self/fd/N).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Beneath",
    "PathRefused",
    "TreeUsage",
    "chown_tree",
    "components",
    "empty_tree",
    "open_beneath",
    "open_file_beneath",
    "regular_files",
    "tree_usage",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(ValueError):
    """A path that goes through a link, leaves its root, or is not what it should be."""


@dataclass(frozen=True)
class Beneath:
    """A folder or file at `root`/`relative`: the root is trusted, nothing below it is.

    The executor builds these from what an event names (a run's source, environment, output,
    cache, outputs): no component below `root` may be a link, at any moment between the check
    and the use. (The sandbox also takes a plain Path, trusted whole: tests, the operator's.)
    """

    root: Path
    relative: tuple[str, ...] = ()

    @classmethod
    def of(cls, root: Path, relative: str) -> Beneath:
        """`root` and a relative path (checked: no '..', no absolute path)."""
        return cls(Path(root), tuple(components(relative)))

    @property
    def path(self) -> Path:
        """The path, joined without resolving anything (for messages and plain checks)."""
        return Path(self.root, *self.relative)

    def open_file(self) -> int | None:
        """A read descriptor for this regular file, no link followed; None if it is not one."""
        if not self.relative:
            return None
        try:
            parent = open_beneath(self.root, list(self.relative[:-1]))
        except (PathRefused, OSError):
            return None
        try:
            return open_file_beneath(parent, self.relative[-1])
        finally:
            os.close(parent)


def components(relative: str) -> list[str]:
    """The parts of a relative path; refuses absolute paths, '..', empty names and NUL."""
    if not relative or relative.startswith("/") or "\0" in relative:
        raise PathRefused(f"not a relative path: {relative!r}")
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise PathRefused(f"not a path below its folder: {relative!r}")
    return parts


def open_beneath(
    root: Path | str | int, relative: str | list[str], *, create: bool = False, mode: int = 0o700
) -> int:
    """A directory descriptor for `root`/`relative`, no component a link; the caller closes it.

    `root` is trusted (the operator's configured folder, opened as it is) or an open directory
    descriptor. With `create`, missing folders are made (`mode`, owned by the caller).
    """
    parts = components(relative) if isinstance(relative, str) else list(relative)
    if isinstance(root, int):
        fd = os.dup(root)
    else:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part or "\0" in part:
                raise PathRefused(f"not a folder name: {part!r}")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise PathRefused(f"{part!r} does not exist") from None
            except (NotADirectoryError, OSError) as exc:
                # ELOOP (a link) or ENOTDIR (a file): either way not a folder we may use.
                raise PathRefused(f"{part!r} is a link or not a folder ({exc.strerror})") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_file_beneath(dir_fd: int, name: str) -> int | None:
    """A read descriptor for the regular file `name` in `dir_fd`; None for links and the rest."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return fd


def regular_files(
    dir_fd: int, skipped: list[str] | None = None
) -> Iterator[tuple[str, int, os.stat_result]]:
    """(relative path, parent directory fd, lstat) of every regular file below `dir_fd`.

    Links are never followed (os.fwalk opens each folder relative to its parent and checks it is
    the folder it listed); the parent fd is valid only until the next item. Links, devices and
    FIFOs are left out, their paths added to `skipped` when given.
    """
    top = os.dup(dir_fd)
    try:
        for folder, dirs, files, folder_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in sorted(files + dirs):
                try:
                    info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                except OSError:
                    continue
                rel = os.path.normpath(os.path.join(folder, name))
                if stat.S_ISREG(info.st_mode):
                    yield rel, folder_fd, info
                elif not stat.S_ISDIR(info.st_mode) and skipped is not None:
                    skipped.append(rel)
    finally:
        os.close(top)


@dataclass(frozen=True)
class TreeUsage:
    """How much a folder holds: bytes (allocated or apparent, whichever is larger), entries,
    and the size of its largest file."""

    bytes: int
    entries: int
    largest: int = 0


def tree_usage(dir_fd: int) -> TreeUsage:
    """The size of everything below `dir_fd`, links counted as themselves, never followed."""
    total = entries = largest = 0
    top = os.dup(dir_fd)
    try:
        for _folder, dirs, files, folder_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in files + dirs:
                try:
                    info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                except OSError:
                    continue
                entries += 1
                size = max(info.st_size, info.st_blocks * 512)
                total += size
                largest = max(largest, size)
    finally:
        os.close(top)
    return TreeUsage(bytes=total, entries=entries, largest=largest)


def chown_tree(dir_fd: int, uid: int, gid: int) -> int:
    """Give everything below (and including) `dir_fd` to uid:gid, links never followed.

    Returns the number of entries changed. The job may be changing the tree meanwhile (another
    run of the same researcher): entries that vanish are skipped, links are changed themselves.
    """
    os.fchown(dir_fd, uid, gid)
    count = 1
    top = os.dup(dir_fd)
    try:
        for _folder, dirs, files, folder_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in files + dirs:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(name, uid, gid, dir_fd=folder_fd, follow_symlinks=False)
                    count += 1
    finally:
        os.close(top)
    return count


def empty_tree(dir_fd: int) -> None:
    """Remove everything below `dir_fd` (keeping the folder itself), links never followed."""
    for entry in os.listdir(dir_fd):
        try:
            info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            try:
                child = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            try:
                empty_tree(child)
            finally:
                os.close(child)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(entry, dir_fd=dir_fd)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=dir_fd)
