"""Which commits of a push need checking, and the signed bytes of one commit, read with `git`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from secd_shared.git import Repository

__all__ = ["ZERO", "GitError", "commits_to_verify", "read_commit"]

ZERO = "0" * 40
_SHA = re.compile(r"[0-9a-f]{40}")


class GitError(RuntimeError):
    """`git` failed on the repository for a reason that is not the push's fault."""


def _repository(repo: Path) -> Repository:
    # The door reads exactly the objects the push contains: replace refs, which can be pushed
    # and would make `git cat-file` show other bytes than the ones a commit id names, are off.
    return Repository(repo, error=GitError)


def _require_commit(git: Repository, sha: str) -> str:
    """The sha, lowercased, once it is known to name a commit of the repository."""
    if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
        raise ValueError(f"push names {sha!r}, which is not a 40-hex commit id")
    sha = sha.lower()
    repo = git.path
    done = git.run("cat-file", "-t", "--end-of-options", sha, check=False)
    if done.returncode != 0:
        if b"not a git repository" in done.stderr:
            raise GitError(f"{repo} is not a git repository")
        raise ValueError(f"push names commit {sha[:7]}, which is not in repository {repo}")
    kind = done.stdout.decode().strip()
    if kind != "commit":
        raise ValueError(
            f"push names {sha[:7]}, which is a {kind} in repository {repo}, not a commit"
        )
    return sha


def _rev_list(git: Repository, tip: str, exclude: Iterable[str]) -> list[str]:
    lines = []
    for sha in exclude:
        # rev-list --stdin reads options too: only a bare object id may reach it.
        if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
            raise ValueError(f"not a 40-hex commit id in the exclusions: {sha!r}")
        lines.append(f"^{sha.lower()}\n")
    out = git.output(
        "rev-list",
        "--topo-order",
        "--reverse",
        "--ignore-missing",
        "--stdin",
        "--end-of-options",
        tip,
        input="".join(lines).encode(),
    )
    return out.split()


def _other_branch_heads(git: Repository, ref: str) -> list[str]:
    out = git.output("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
    heads = []
    for line in out.splitlines():
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
    if isinstance(after, str) and after == ZERO:
        return []
    git = _repository(Path(repo))
    after = _require_commit(git, after)
    if before != ZERO:
        before = _require_commit(git, before)

    unverified = _rev_list(git, after, already_verified)
    if before != ZERO:
        pushed = _rev_list(git, after, [before])
    else:
        pushed = _rev_list(git, after, _other_branch_heads(git, ref) if ref else [])
    # Oldest first across both lists: a commit only in `unverified` is reachable from `before`,
    # so none of its ancestors is in `pushed`, and putting those first keeps parents first.
    in_pushed = set(pushed)
    return [sha for sha in unverified if sha not in in_pushed] + pushed


def read_commit(repo: Path, sha: str) -> tuple[bytes, str | None]:
    """(signed payload, armored signature or None) from `git cat-file commit`: the payload is the raw commit with the gpgsig header and its continuation lines removed; the signature is the header's value with the one leading space of each continuation line removed."""  # noqa: E501
    git = _repository(Path(repo))
    sha = _require_commit(git, sha)
    raw = git.cat_file("commit", sha)
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
