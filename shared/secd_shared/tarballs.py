"""Folders as tar archives, so they can travel as one artifact: a run's source, its environment.

Made reproducibly (sorted names, no times, no owners), so the same folder gives the same digest;
unpacked without trusting the archive: nothing lands outside the destination, no device, FIFO or
setuid file is made, and a link may only point inside the tree (sources) or anywhere but never be
written through (environments, whose `bin/python` links to the interpreter they were made with).
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["TarError", "extract", "write_folder"]

log = logging.getLogger(__name__)


class TarError(Exception):
    """An archive that cannot be made or unpacked; the message is one line."""


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = (info.mode & 0o755) | (0o644 if info.isfile() else 0)
    if info.isdir():
        info.mode = 0o755
    return info


def write_folder(folder: Path, out: IO[bytes]) -> None:
    """A reproducible tar of everything below `folder` (links kept as links) into `out`."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(root, name)
                rel = path.relative_to(folder).as_posix()
                info = archive.gettarinfo(str(path), arcname=rel)
                if not (info.isfile() or info.isdir() or info.issym()):
                    continue
                info = _reset(info)
                if info.isfile():
                    with open(path, "rb") as data:
                        archive.addfile(info, data)
                else:
                    archive.addfile(info)


def _links_inside(
    skipped: list[str],
) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's "data" filter, except that a link pointing outside is dropped, not fatal."""

    def keep(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        try:
            return tarfile.data_filter(member, dest)
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            # A committed absolute or escaping symlink (a stray venv, a data shortcut) is not a
            # reason to refuse the run, but it must not lead anywhere outside the source.
            skipped.append(member.name)
            return None

    return keep


def _links_anywhere(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "tar" filter (nothing outside `dest`, none written through a link), no hard
    links, no setuid or group/other-writable modes."""
    member = tarfile.tar_filter(member, dest)
    if member.islnk() or not (member.isfile() or member.isdir() or member.issym()):
        return None
    return member.replace(mode=(member.mode or 0) & 0o755, deep=False)


def extract(source: IO[bytes], dest: Path, *, links: str = "inside") -> list[str]:
    """Unpack the archive `source` into the new folder `dest`; returns what was left out.

    `links`: "inside" (a source tree: links that leave it are dropped) or "anywhere" (an
    environment: links are kept as they are, but nothing is written through one).
    """
    dest.mkdir(parents=True)
    skipped: list[str] = []
    chosen = _links_inside(skipped) if links == "inside" else _links_anywhere
    try:
        # Streamed ("r|"): the archive never sits whole in memory.
        with tarfile.open(fileobj=source, mode="r|") as archive:
            archive.extractall(dest, filter=chosen)  # noqa: S202 (filtered above)
    except tarfile.TarError as exc:
        raise TarError(f"cannot unpack the archive: {exc}") from None
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o6000:
                os.chmod(path, stat.S_IMODE(info.st_mode) & 0o755)
    if skipped:
        log.warning("%d link(s) pointing outside were left out: %s", len(skipped), skipped[:10])
    return skipped
