"""The commits already verified, per repository, so a later push checks only what is new."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["VerifiedCommits"]


class VerifiedCommits:
    """An append-only file of commit ids per repository, safe for several verifier processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, repository: str) -> Path:
        return self.root / (hashlib.sha256(repository.encode()).hexdigest()[:32] + ".txt")

    def load(self, repository: str) -> set[str]:
        """Every commit of `repository` verified so far."""
        try:
            return set(self._file(repository).read_text().split())
        except FileNotFoundError:
            return set()

    def add(self, repository: str, commits: Iterable[str]) -> None:
        """Record commits as verified (one O_APPEND write under a lock)."""
        lines = "".join(f"{c}\n" for c in commits)
        if not lines:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._file(repository), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
