"""Which commits of a push need checking, and the signed bytes of one commit, read with `git`."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ZERO", "GitError", "commits_to_verify", "read_commit"]

ZERO = "0" * 40
_SHA = re.compile(r"[0-9a-f]{40}")

# Replace refs can be pushed, and would make `git cat-file` show other bytes than the ones the
# commit id names; the verifier must read exactly the objects the push contains.
_GIT_ENV = {**os.environ, "GIT_NO_REPLACE_OBJECTS": "1", "LC_ALL": "C"}


class GitError(RuntimeError):
    """`git` failed on the repository for a reason that is not the push's fault."""


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        env=_GIT_ENV,
        check=False,
    )


def _checked(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    done = _git(repo, *args, stdin=stdin)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise GitError(f"git {args[0]} failed in {repo}: {err}")
    return done.stdout


def _require_commit(repo: Path, sha: str) -> str:
    """The sha, lowercased, once it is known to name a commit of the repository."""
    if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
        raise ValueError(f"push names {sha!r}, which is not a 40-hex commit id")
    sha = sha.lower()
    done = _git(repo, "cat-file", "-t", sha)
    if done.returncode != 0:
        if b"not a git repository" in done.stderr or b"cannot change to" in done.stderr:
            raise GitError(f"{repo} is not a git repository")
        raise ValueError(f"push names commit {sha[:7]}, which is not in repository {repo}")
    kind = done.stdout.decode().strip()
    if kind != "commit":
        raise ValueError(
            f"push names {sha[:7]}, which is a {kind} in repository {repo}, not a commit"
        )
    return sha


def _rev_list(repo: Path, tip: str, exclude: Iterable[str]) -> list[str]:
    lines = []
    for sha in exclude:
        # rev-list --stdin reads options too: only a bare object id may reach it.
        if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
            raise ValueError(f"not a 40-hex commit id in the exclusions: {sha!r}")
        lines.append(f"^{sha.lower()}\n")
    out = _checked(
        repo,
        "rev-list",
        "--topo-order",
        "--reverse",
        "--ignore-missing",
        "--stdin",
        tip,
        stdin="".join(lines).encode(),
    )
    return out.decode().split()


def _other_branch_heads(repo: Path, ref: str) -> list[str]:
    out = _checked(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
    heads = []
    for line in out.decode().splitlines():
        sha, _, name = line.partition(" ")
        if name != ref:
            heads.append(sha)
    return heads


def commits_to_verify(
    repo: Path,
    before: str,
    after: str,
    already_verified: Iterable[str],
    *,
    ref: str | None = None,
) -> list[str]:
    """Commits of a push that must be verified, oldest first: everything in before..after
    (for a new branch, before == ZERO: what is reachable from after and from no other branch
    than `ref`, or everything reachable when `ref` is not given), plus any commit reachable
    from `after` that is not in `already_verified` (closes the 'unverified history' hole: an old
    unsigned commit pushed earlier on another branch and rejected is still checked).

    A commit in `already_verified` vouches for its whole history (git excludes everything it
    reaches), which holds when the set only ever gains commits whose history was verified too.
    Deleting a branch (after == ZERO) has nothing to verify. Ids unknown to the repository in
    `already_verified` are ignored; a bad `before` or `after` raises ValueError.
    """
    repo = Path(repo)
    if isinstance(after, str) and after == ZERO:
        return []
    after = _require_commit(repo, after)
    if before != ZERO:
        before = _require_commit(repo, before)

    unverified = _rev_list(repo, after, already_verified)
    if before != ZERO:
        pushed = _rev_list(repo, after, [before])
    else:
        pushed = _rev_list(repo, after, _other_branch_heads(repo, ref) if ref else [])
    # Oldest first across both lists: a commit only in `unverified` is reachable from `before`,
    # so none of its ancestors is in `pushed`, and putting those first keeps parents first.
    in_pushed = set(pushed)
    return [sha for sha in unverified if sha not in in_pushed] + pushed


def read_commit(repo: Path, sha: str) -> tuple[bytes, str | None]:
    """(signed payload, armored signature or None) from `git cat-file commit`: the payload is the raw commit with the gpgsig header and its continuation lines removed; the signature is the header's value with the one leading space of each continuation line removed."""  # noqa: E501
    sha = _require_commit(Path(repo), sha)
    raw = _checked(Path(repo), "cat-file", "commit", sha)
    header, sep, message = raw.partition(b"\n\n")
    payload: list[bytes] = []
    signatures: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in header.split(b"\n"):
        if current is not None and line.startswith(b" "):
            current.append(line[1:])
            continue
        current = None
        name = line.split(b" ", 1)[0]
        if name == b"gpgsig":
            current = [line[len(b"gpgsig ") :]]
            signatures.append(current)
        elif name == b"gpgsig-sha256":
            # git leaves the other hash algorithm's signature out of the signed bytes as well.
            current = []
        else:
            payload.append(line)
    if len(signatures) > 1:
        # git would glue them together; which one counts would then be up to the parser.
        raise ValueError(f"commit {sha[:7]} carries {len(signatures)} gpgsig headers")
    signature = b"\n".join(signatures[0]).decode("utf-8", "replace") if signatures else None
    if signature is not None and not signature.endswith("\n"):
        signature += "\n"
    return b"\n".join(payload) + sep + message, signature
