"""Results back into the researcher's repository as a new branch, with git plumbing only.

No working tree, no checkout, no hooks: blobs are hashed into the object store, a tree is written
from a throwaway index, a commit is made as a child of the pushed head (its tree holds only the
results), and the branch is created
only if it does not exist yet, so a retry after a crash returns the commit made the first time.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from secd_shared.git import Repository
from secd_shared.safepath import Beneath

__all__ = ["PublishError", "extend_branch", "list_files", "publish_branch"]

MAX_PATH_CHARS = 4096


class PublishError(Exception):
    """The branch cannot be published; the message is one line."""


def _repository(repo: Path) -> Repository:
    return Repository(repo, error=PublishError)


def _resolve_commit(git: Repository, commit: str) -> str:
    if not commit or commit.startswith("-") or "\0" in commit:
        raise PublishError(f"not a commit name: {commit!r}")
    sha = git.resolve(commit, peel="commit")
    if sha is None:
        raise PublishError(f"commit {commit} is not in {git.path}")
    return sha


def _check_branch(branch: str) -> None:
    if not branch or branch.startswith("-") or "@{" in branch or branch == "@":
        raise PublishError(f"not a valid branch name: {branch!r}")
    if not Repository(None, error=PublishError).branch_name_is_valid(branch):
        raise PublishError(f"not a valid branch name: {branch!r}")


def _check_paths(paths: list[str]) -> None:
    for path in paths:
        if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
            raise PublishError(f"not a file path for the commit: {path!r}")
        if path.startswith("/") or "\\" in path or any(ord(c) < 32 or c == "\x7f" for c in path):
            raise PublishError(f"file path must be relative, without control characters: {path!r}")
        for part in path.split("/"):
            if part in ("", ".", ".."):
                raise PublishError(f"file path must not have empty, '.' or '..' parts: {path!r}")
            # Trailing dots and spaces vanish on some filesystems, so ".git." is ".git" there.
            if part.rstrip(". ").lower() == ".git":
                raise PublishError(f"file path must not have a .git part: {path!r}")
    directories = {path.rsplit("/", 1)[0] for path in paths if "/" in path}
    parents = {"/".join(d.split("/")[:i]) for d in directories for i in range(1, d.count("/") + 2)}
    clash = sorted(parents.intersection(paths))
    if clash:
        raise PublishError(f"{clash[0]!r} is both a file and a directory of other files")


def _hash_file(git: Repository, source: Path | Beneath) -> str:
    """Write a file on disk into the object store, streamed, refusing symlinks and non-files.

    A Beneath (a job's output) is reached without following a link on any component.
    """
    if isinstance(source, Beneath):
        fd = source.open_file()
        if fd is None:
            raise PublishError(f"cannot read {source.path}: a link or not a regular file")
    else:
        try:
            # O_NOFOLLOW: a symlink planted among the outputs must not publish what it points at.
            # O_NONBLOCK: opening a FIFO must not hang; it is refused just below.
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise PublishError(f"cannot read {source}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PublishError(f"not a regular file: {source}")
        os.set_blocking(fd, True)
        # git reads a regular-file stdin like a path: mapped or streamed, never into the heap.
        return git.hash_object(fd=fd)
    finally:
        os.close(fd)


def _blob_entries(git: Repository, files: dict[str, Path | Beneath | bytes]) -> dict[str, str]:
    blobs = {}
    for path in sorted(files):
        content = files[path]
        if isinstance(content, bytes | bytearray | memoryview):
            blobs[path] = git.hash_object(bytes(content))
        else:
            blobs[path] = _hash_file(
                git, content if isinstance(content, Beneath) else Path(content)
            )
    return blobs


def _tree_of(git: Repository, blobs: dict[str, str]) -> str:
    entries = b"".join(
        f"100644 {sha}\t{path}".encode() + b"\0" for path, sha in sorted(blobs.items())
    )
    with tempfile.TemporaryDirectory(prefix="secd-publish-") as scratch:
        index = Path(scratch) / "index"
        if entries:
            git.update_index(entries, index_file=index)
        return git.write_tree(index_file=index)


def extend_branch(
    repo: Path,
    branch: str,
    files: dict[str, Path | Beneath | bytes],
    message: str,
    *,
    author: tuple[str, str] = ("secd", "secd@localhost"),
) -> str:
    """Add (or replace) `files` on the existing branch `branch` as a new commit; returns the
    branch's head. Idempotent: when every file is there already with the same content, the head
    is returned as it is. A branch moved meanwhile by another writer: PublishError (retry)."""
    _check_branch(branch)
    _check_paths(list(files))
    git = _repository(repo)
    ref = f"refs/heads/{branch}"
    head = git.resolve(ref)
    if head is None:
        raise PublishError(f"branch {branch} does not exist yet")
    current: dict[str, str] = {}
    for line in git.ls_tree(head, options=["-r", "-z"]).split(b"\0"):
        if line:
            meta, _, path = line.partition(b"\t")
            current[path.decode("utf-8", "surrogateescape")] = meta.split()[2].decode()
    blobs = _blob_entries(git, files)
    if all(current.get(path) == sha for path, sha in blobs.items()):
        return head
    merged = {**current, **blobs}
    _check_paths(list(merged))
    commit = git.commit_tree(_tree_of(git, merged), [head], message, identity=author)
    git.move_ref(ref, commit, head, message="secd: release more results")
    return commit


def publish_branch(
    repo: Path,
    branch: str,
    parent: str | None,
    files: dict[str, Path | Beneath | bytes],
    message: str,
    *,
    author: tuple[str, str] = ("secd", "secd@localhost"),
) -> str:
    """Create branch `branch`: a child of `parent` whose tree is `files` alone; returns its commit.

    Idempotent: a branch that exists already is returned as it is.
    """
    _check_branch(branch)
    paths = list(files)
    _check_paths(paths)
    git = _repository(repo)
    ref = f"refs/heads/{branch}"
    existing = git.resolve(ref)
    if existing is not None:
        return existing
    parent_sha = _resolve_commit(git, parent) if parent is not None else None
    # The tree holds the results only (docs/researcher.md): the parent links them to the
    # pushed commit, but the source is not copied onto the results branch.
    tree = _tree_of(git, _blob_entries(git, files))
    parents = [parent_sha] if parent_sha is not None else []
    commit = git.commit_tree(tree, parents, message, identity=author)
    try:
        git.create_ref(ref, commit, message="secd: publish results")
    except PublishError:
        # Another publisher (or an earlier attempt) created it between the check and now.
        winner = git.resolve(ref)
        if winner is not None:
            return winner
        raise
    return commit


def list_files(repo: Path, commit: str) -> list[str]:
    """Every file path in the tree of `commit`, recursively."""
    git = _repository(repo)
    sha = _resolve_commit(git, commit)
    listing = git.ls_tree(sha, options=["-r", "--name-only"])
    return [name.decode("utf-8", "surrogateescape") for name in listing.split(b"\0") if name]
