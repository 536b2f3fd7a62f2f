"""The researcher's source at one commit, read from the bare repository without a checkout."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import IO

from secd_shared.git import Repository
from secd_shared.limits import format_size

__all__ = ["SourceError", "read_file_at", "resolve_commit", "write_archive"]

# secd.yml and requirements.txt are small; a huge one is a mistake and should not fill memory.
MAX_READ_BYTES = 1024 * 1024


class SourceError(Exception):
    """The source cannot be read or exported; the message is one line."""


def _repository(repo: Path) -> Repository:
    return Repository(repo, error=SourceError)


def resolve_commit(git: Repository, commit: str) -> str:
    """The full object name of `commit`, which must name a commit in the repository."""
    if not commit or commit.startswith("-") or "\0" in commit:
        raise SourceError(f"not a commit name: {commit!r}")
    sha = git.resolve(commit, peel="commit")
    if sha is None:
        raise SourceError(f"commit {commit} is not in {git.path}")
    return sha


def _check_relative(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise SourceError(f"not a relative path inside the repository: {path!r}")


def read_file_at(
    repo: Path, commit: str, path: str, *, max_bytes: int = MAX_READ_BYTES
) -> bytes | None:
    """The bytes of file `path` at `commit`, or None if the commit has no such file."""
    _check_relative(path)
    git = _repository(repo)
    sha = resolve_commit(git, commit)
    listing = git.ls_tree(sha, path, options=["-l"])
    entry = next((e for e in listing.split(b"\0") if e.endswith(b"\t" + path.encode())), None)
    if entry is None:
        return None
    mode, kind, blob, size = entry.split(b"\t", 1)[0].split()
    if kind != b"blob":
        raise SourceError(f"{path} at {commit[:12]} is a {kind.decode()}, not a file")
    if mode == b"120000":
        raise SourceError(f"{path} at {commit[:12]} is a symbolic link; commit the file itself")
    if int(size) > max_bytes:
        raise SourceError(
            f"{path} at {commit[:12]} is {format_size(int(size))}, more than the "
            f"{format_size(max_bytes)} secd reads; keep it short"
        )
    return git.cat_file("blob", blob.decode())


def write_archive(repo: Path, commit: str, out: IO[bytes]) -> str:
    """A tar of the tree of `commit` into `out` (what the run sees as /job); returns the sha.

    `git archive` of the commit; an empty tree as an empty tar (git writes a pax header alone,
    which tarfile cannot read back).
    """
    git = _repository(repo)
    sha = resolve_commit(git, commit)
    if not git.ls_tree(sha, options=["--name-only"]):
        tarfile.open(fileobj=out, mode="w").close()
        return sha
    with git.archive(sha) as stream:
        shutil.copyfileobj(stream, out, 1024 * 1024)
    return sha
