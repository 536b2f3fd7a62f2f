"""The researcher's source at one commit, read from the bare repository without a checkout."""

from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

from secd_shared.git import Repository
from secd_shared.limits import format_size

__all__ = ["SourceError", "export_source", "read_file_at"]

log = logging.getLogger(__name__)

# secd.yml and requirements.txt are small; a huge one is a mistake and should not fill memory.
MAX_READ_BYTES = 1024 * 1024


class SourceError(Exception):
    """The source cannot be read or exported; the message is one line."""


def _repository(repo: Path) -> Repository:
    return Repository(repo, error=SourceError)


def _resolve_commit(git: Repository, commit: str) -> str:
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
    sha = _resolve_commit(git, commit)
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


def _filter(skipped: list[str]):
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


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def export_source(repo: Path, commit: str, dest: Path) -> Path:
    """Write the tree of `commit` into `dest`, replacing an earlier attempt; returns `dest`."""
    git = _repository(repo)
    sha = _resolve_commit(git, commit)
    dest = Path(dest)
    staging = dest.with_name(dest.name + ".tmp")
    _remove(staging)
    staging.mkdir(parents=True)
    skipped: list[str] = []
    if not git.ls_tree(sha, options=["--name-only"]):
        # An empty tree: git archive writes only a pax header, which tarfile cannot read.
        return _replace(staging, dest)
    try:
        # Streamed ("r|"): the archive never sits whole in memory or on disk.
        with git.archive(sha) as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            archive.extractall(staging, filter=_filter(skipped))  # noqa: S202 (data filter)
    except BaseException as exc:
        _remove(staging)
        if isinstance(exc, tarfile.TarError):
            raise SourceError(f"cannot extract {commit}: {exc}") from None
        raise
    if skipped:
        log.warning(
            "export of %s skipped %d link(s) pointing outside the source: %s",
            sha[:12],
            len(skipped),
            ", ".join(skipped[:10]),
        )
    return _replace(staging, dest)


def _replace(staging: Path, dest: Path) -> Path:
    """Put the finished `staging` folder in the place of `dest`; returns `dest`."""
    # A directory cannot be renamed over a non-empty one; move the old one aside first.
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(dest.name + ".old")
        _remove(old)
        dest.rename(old)
        staging.rename(dest)
        _remove(old)
    else:
        staging.rename(dest)
    return dest
