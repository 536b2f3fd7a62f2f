"""Declared outputs (secd.yml's `outputs:`): which files a job means to release, and the glob
rules that say whether a file is one of them. The builder checks the declarations; the airlock
matches the job's files against them."""

from __future__ import annotations

from fnmatch import fnmatchcase

from secd_shared.events import DeclaredOutput

__all__ = ["MAX_OUTPUTS", "check_glob", "declared_for", "glob_matches"]

MAX_OUTPUTS = 100
MAX_GLOB_CHARS = 255


def check_glob(pattern: str) -> str | None:
    """What is wrong with an output glob, in words, or None when it is fine."""
    if not pattern or len(pattern) > MAX_GLOB_CHARS:
        return f"must be a glob of 1 to {MAX_GLOB_CHARS} characters, like 'tables/*.csv'"
    if any(ord(c) < 32 or c == "\x7f" for c in pattern) or "\\" in pattern:
        return "must not hold control characters or backslashes"
    if pattern.startswith("/"):
        return "must be relative to OUTPUT_PATH, like 'tables/*.csv'"
    if any(part in ("", ".", "..") for part in pattern.split("/")):
        return "must not have empty, '.' or '..' parts"
    return None


def glob_matches(pattern: str, path: str) -> bool:
    """Whether relative `path` matches `pattern`: `*`, `?` and `[...]` within one part of the
    path, `**` for any number of parts (`**/*.csv` is every CSV file)."""
    return _match(pattern.split("/"), path.split("/"))


def _match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match(rest, parts[1:])


def declared_for(path: str, outputs: list[DeclaredOutput]) -> DeclaredOutput | None:
    """The first declaration that `path` matches, or None (an undeclared file)."""
    return next((o for o in outputs if glob_matches(o.glob, path)), None)
