"""Results back into the researcher's repository as a new branch, with git plumbing only.

No working tree, no checkout, no hooks: blobs are hashed into the object store, a tree is written
from a throwaway index, a commit is made as a child of the pushed head (its tree holds only the
results), and the branch is created
only if it does not exist yet, so a retry after a crash returns the commit made the first time.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from secd_shared.safepath import Beneath

__all__ = ["PublishError", "list_files", "publish_branch"]

MAX_PATH_CHARS = 4096


class PublishError(Exception):
    """The branch cannot be published; the message is one line."""


def _git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # An inherited GIT_DIR, GIT_INDEX_FILE or GIT_OBJECT_DIRECTORY would redirect the writes.
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    env.update(extra or {})
    return env


def _git(
    repo: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    stdin: int | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    argv = ["git", "--git-dir", str(repo), "-c", "core.hooksPath=/dev/null", *args]
    result = subprocess.run(
        argv,
        input=input,
        stdin=stdin if input is None else None,
        capture_output=True,
        env=_git_env(env),
        check=False,
    )
    if check and result.returncode != 0:
        detail = " ".join(result.stderr.decode("utf-8", "replace").split())
        raise PublishError(f"git {args[0]} failed in {repo}: {detail}")
    return result


def _resolve_commit(repo: Path, commit: str) -> str:
    if not commit or commit.startswith("-") or "\0" in commit:
        raise PublishError(f"not a commit name: {commit!r}")
    result = _git(
        repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}",
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise PublishError(f"commit {commit} is not in {repo}")
    return result.stdout.decode().strip()


def _check_branch(branch: str) -> None:
    if not branch or branch.startswith("-") or "@{" in branch or branch == "@":
        raise PublishError(f"not a valid branch name: {branch!r}")
    result = subprocess.run(
        ["git", "check-ref-format", "--branch", branch],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_git_env(),
        check=False,
    )
    if result.returncode != 0 or result.stdout.decode().strip() != branch:
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


def _hash_file(repo: Path, source: Path | Beneath) -> str:
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
        result = _git(repo, "hash-object", "-w", "--no-filters", "--stdin", stdin=fd)
    finally:
        os.close(fd)
    return result.stdout.decode().strip()


def _hash_bytes(repo: Path, data: bytes) -> str:
    result = _git(repo, "hash-object", "-w", "--no-filters", "--stdin", input=data)
    return result.stdout.decode().strip()


def _existing(repo: Path, ref: str) -> str | None:
    result = _git(repo, "rev-parse", "--verify", "--quiet", ref, check=False)
    return result.stdout.decode().strip() if result.returncode == 0 else None


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
    ref = f"refs/heads/{branch}"
    existing = _existing(repo, ref)
    if existing is not None:
        return existing
    parent_sha = _resolve_commit(repo, parent) if parent is not None else None
    name, email = author
    identity = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    entries: list[bytes] = []
    for path in sorted(paths):
        content = files[path]
        if isinstance(content, bytes | bytearray | memoryview):
            sha = _hash_bytes(repo, bytes(content))
        else:
            sha = _hash_file(repo, content if isinstance(content, Beneath) else Path(content))
        entries.append(f"100644 {sha}\t{path}".encode() + b"\0")
    with tempfile.TemporaryDirectory(prefix="secd-publish-") as scratch:
        index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        # The tree holds the results only (docs/researcher.md): the parent links them to the
        # pushed commit, but the source is not copied onto the results branch.
        if entries:
            _git(
                repo,
                "update-index",
                "--add",
                "--replace",
                "-z",
                "--index-info",
                env=index,
                input=b"".join(entries),
            )
        tree = _git(repo, "write-tree", env=index).stdout.decode().strip()
    args = ["commit-tree", "--no-gpg-sign", tree, "-F", "-"]
    if parent_sha is not None:
        args[2:2] = ["-p", parent_sha]
    commit = _git(repo, *args, env=identity, input=message.encode()).stdout.decode().strip()
    zero = "0" * len(commit)
    created = _git(
        repo, "update-ref", "-m", "secd: publish results", ref, commit, zero, check=False
    )
    if created.returncode != 0:
        # Another publisher (or an earlier attempt) created it between the check and now.
        winner = _existing(repo, ref)
        if winner is not None:
            return winner
        detail = " ".join(created.stderr.decode("utf-8", "replace").split())
        raise PublishError(f"cannot create branch {branch} in {repo}: {detail}")
    return commit


def list_files(repo: Path, commit: str) -> list[str]:
    """Every file path in the tree of `commit`, recursively."""
    sha = _resolve_commit(repo, commit)
    listing = _git(repo, "ls-tree", "-r", "-z", "--name-only", "--full-tree", sha).stdout
    return [name.decode("utf-8", "surrogateescape") for name in listing.split(b"\0") if name]
