"""The embedded forge: bare git repositories on this machine, each with a post-receive hook
that tells the gateway about every pushed ref."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from secd_shared.git import Repository

__all__ = [
    "ForgeError",
    "check_pushed_commit",
    "create_repository",
    "repository_path",
    "validate_repository_name",
]

# Matched with fullmatch only: `$` in a pattern lets a trailing newline through.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}){0,3}")
_SHA = re.compile(r"[0-9a-f]{40}")
# What the post-receive hook of a repository made by create_repository runs.
_HOOK_MODULE = "-m secd_shared.forge_hook "


class ForgeError(ValueError):
    """A repository name or path that is not acceptable."""


def validate_repository_name(name: str) -> str:
    """A project path like 'alice/model': letters, digits, '_', '.', '-', at most 4 levels."""
    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or ".." in name
        or name.endswith(".git")
    ):
        raise ForgeError(
            f"repository name {name!r} is not valid: use letters, digits, '_', '.', '-' "
            "and '/' between levels, like 'alice/diabetes-model'"
        )
    return name


def repository_path(root: Path, name: str) -> Path:
    """The bare repository of project `name` under the forge root; it must exist."""
    validate_repository_name(name)
    path = (root / f"{name}.git").resolve()
    if root.resolve() not in path.parents or not (path / "HEAD").is_file():
        raise ForgeError(f"repository {name!r} does not exist in this forge")
    return path


def check_pushed_commit(root: Path, name: str, commit: str) -> Path:
    """The bare repository `name` made by secd under `root`, once `commit` is known to be a
    commit in it; raises ForgeError saying which of the two is not so."""
    path = repository_path(root, name)
    hook = path / "hooks" / "post-receive"
    try:
        made_by_secd = hook.is_file() and _HOOK_MODULE in hook.read_text(errors="replace")
    except OSError:
        made_by_secd = False
    git = Repository(path, timeout_s=30, error=ForgeError)
    bare = git.run("rev-parse", "--is-bare-repository", check=False) if made_by_secd else None
    if bare is None or bare.returncode != 0 or bare.stdout.strip() != b"true":
        raise ForgeError(
            f"repository {name!r} was not made by secd (a bare repository with secd's hook); "
            "create it with `secd repo create`"
        )
    if not isinstance(commit, str) or not _SHA.fullmatch(commit):
        raise ForgeError(f"{commit!r} is not a 40-character lowercase hex commit id")
    if git.object_type(commit) != "commit":
        raise ForgeError(f"commit {commit[:12]} is not in repository {name!r}")
    return path


_HOOK = """#!/bin/sh
# secd: report every pushed ref to the gateway (the token is read from a file, never an argument).
exec {python} -m secd_shared.forge_hook {url} {token_file} {name}
"""


def create_repository(root: Path, name: str, *, gateway_url: str, token_file: Path) -> Path:
    """Create a bare repository whose post-receive hook posts to the gateway; returns its path."""
    validate_repository_name(name)
    path = root / f"{name}.git"
    Repository.init_bare(path, initial_branch="main", error=ForgeError)
    hook = path / "hooks" / "post-receive"
    hook.write_text(
        _HOOK.format(
            python=shlex.quote(sys.executable),
            url=shlex.quote(gateway_url),
            token_file=shlex.quote(str(token_file)),
            name=shlex.quote(name),
        )
    )
    hook.chmod(0o755)
    return path
