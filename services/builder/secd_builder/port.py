"""The builder's port: what a run runs with is made by an `EnvironmentBuilder`.

Adapters: `venv.VenvBuilder` (a virtualenv on this machine, handed on as an artifact with the
source), `buildkit.BuildKitBuilder` (an image built in Kubernetes, run by digest) and
`stub.StubBuilder` (builds nothing). The handler (service.py) knows only this module; one
contract suite (tests/contracts/test_builder.py) runs against every adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from secd_builder.environment import BuildError
from secd_shared.events import RunSpec

__all__ = ["BuildError", "BuildRequest", "Built", "EnvironmentBuilder"]


@dataclass(frozen=True)
class BuildRequest:
    """One build: which commit of which repository, for whom, and what secd.yml says."""

    run_id: str
    researcher: str
    repository: str
    ref: str
    commit: str
    spec: RunSpec
    requirements: bytes | None
    has_dockerfile: bool
    # Where the builder writes this build's log (its own work folder).
    log_path: Path
    # The repository on this machine, read for the source (an image build fetches it itself).
    git_dir: Path | None = None


@dataclass(frozen=True)
class Built:
    """What the run runs with: an environment by digest (and its source), or an image."""

    environment: str
    source: str = ""
    image: str | None = None
    reused: bool = False
    seconds: float = 0.0
    log_path: Path | None = None


class EnvironmentBuilder(Protocol):
    """Makes a run's environment. Safe to call again for the same run (a redelivery)."""

    async def environment_for(self, request: BuildRequest) -> Built:
        """Build (or reuse) what `request`'s run needs; raises BuildError with the log's tail."""
        ...

    async def close(self) -> None:
        """Release clients the builder holds."""
        ...
