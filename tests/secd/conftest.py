"""Fixtures for the researcher library: small projects written to disk, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

# Variables a secd run sets; a test starts from none of them and adds what it needs.
_RUN_VARIABLES = (
    "SECD",
    "SECD_CACHE_DIR",
    "SECD_CACHE_MAX_BYTES",
    "SECD_PROJECT_ROOT",
    "OUTPUT_PATH",
)


@dataclass
class Run:
    """A finished `python <script>` in the project."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class ResearchProject:
    """A researcher's project folder: write its files, run its scripts, count computations."""

    root: Path

    def write(self, relative: str, text: str) -> Path:
        """Write (or overwrite) a file of the project."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def run(self, script: str = "main.py", *args: str, **env: str) -> Run:
        """Run a script of the project from its folder, as a researcher would, and wait."""
        clean = {k: v for k, v in os.environ.items() if k not in _RUN_VARIABLES}
        done = subprocess.run(
            [sys.executable, script, *args],
            cwd=self.root,
            env={**clean, "PYTHONDONTWRITEBYTECODE": "1", **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"{script} failed ({done.returncode}):\n{done.stderr}")
        return Run(done.returncode, done.stdout, done.stderr)

    @property
    def computed(self) -> int:
        """How many times a cached function body ran (each appends a line to computed.log)."""
        log = self.root / "computed.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def entries(self, cache: Path | None = None) -> list[Path]:
        """The cache entries on disk."""
        return sorted((cache or self.root / ".secd-cache").rglob("*.entry"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ResearchProject:
    """An empty project folder; variables of a secd run are cleared for in-process use too."""
    for name in _RUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "project"
    root.mkdir()
    return ResearchProject(root)
