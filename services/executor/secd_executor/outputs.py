"""Unpack a run's outputs, as the collector pod sent them (a tar stream), without trusting them.

The archive is researcher-made: names may climb out with `..` or start at `/`, entries may be
links to host files, devices or FIFOs. Only regular files and folders are written, below the
destination, with modes that cannot be setuid or executable by others; everything else is left
out and listed with the reason, for the run manifest.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from pathlib import Path

__all__ = ["MAX_ENTRIES", "unpack_outputs"]

MAX_ENTRIES = 100_000
_CHUNK = 1024 * 1024


def _safe_name(name: str) -> str | None:
    """The entry's path relative to the output root, or None if it escapes it."""
    if "\x00" in name or name.startswith("/"):
        return None
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        return None
    return "" if normal == "." else normal


def _through_link(root: Path, target: Path) -> bool:
    """Whether target or a folder between it and root is a symbolic link."""
    path = target
    while path != root:
        if path.is_symlink():
            return True
        path = path.parent
    return False


def unpack_outputs(archive: Path, dest: Path) -> list[str]:
    """Unpack regular files and folders from `archive` into `dest`; return what was left out."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    excluded: list[str] = []
    count = 0
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                count += 1
                if count > MAX_ENTRIES:
                    excluded.append(f"everything after {MAX_ENTRIES} entries: too many files")
                    break
                relative = _safe_name(member.name)
                if relative is None:
                    excluded.append(f"{member.name}: path leaves the output folder")
                    continue
                if relative == "":
                    continue
                target = root / relative
                # Links are never written, but the folder may hold older files: check anyway.
                if _through_link(root, target):
                    excluded.append(f"{relative}: path goes through a link")
                    continue
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                    os.chmod(target, 0o644)
                elif member.issym() or member.islnk():
                    excluded.append(f"{relative}: a link (to {member.linkname!r}), not a file")
                else:
                    excluded.append(f"{relative}: not a regular file or folder")
    except (tarfile.TarError, EOFError) as exc:
        excluded.append(f"the rest of the outputs: the archive was cut short ({exc})")
    return excluded
