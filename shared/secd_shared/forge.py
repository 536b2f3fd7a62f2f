"""The embedded forge: bare git repositories on this machine, each with a post-receive hook
that tells the gateway about every pushed ref."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = ["ForgeError", "create_repository", "repository_path", "validate_repository_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}){0,3}$")


class ForgeError(ValueError):
    """A repository name or path that is not acceptable."""


def validate_repository_name(name: str) -> str:
    """A project path like 'alice/model': letters, digits, '_', '.', '-', at most 4 levels."""
    if not _NAME.match(name) or ".." in name or name.endswith(".git"):
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


_HOOK = """#!/bin/sh
# secd: report every pushed ref to the gateway (the token is read from a file, never an argument).
exec {python} -m secd_shared.forge_hook {url} {token_file} {name}
"""


def create_repository(root: Path, name: str, *, gateway_url: str, token_file: Path) -> Path:
    """Create a bare repository whose post-receive hook posts to the gateway; returns its path."""
    validate_repository_name(name)
    path = root / f"{name}.git"
    if not (path / "HEAD").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)], check=True
        )
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
