"""EnvironmentBuilder on this machine: a virtualenv per requirements set, handed on by digest.

The virtualenv is built (or reused) in the builder's own folder (environment.py), made
relocatable, and archived once into the artifact store; the run names it by that archive's
digest, and the executor unpacks it into a folder of its own. The source at the pushed commit
travels the same way: `git archive` of the commit, stored as one artifact.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from secd_builder.environment import Environment, ensure_environment
from secd_builder.port import BuildRequest, Built
from secd_builder.source import SourceError, write_archive
from secd_shared.artifacts import ArtifactStore, check_digest
from secd_shared.tarballs import write_folder

__all__ = ["VenvBuilder"]

# Beside each environment: the digest of its archive, so it is archived once.
_DIGEST_SUFFIX = ".artifact"


class VenvBuilder:
    """Builds virtualenvs under `envs_dir` and stores them and the sources in `store`."""

    def __init__(
        self,
        store: ArtifactStore,
        envs_dir: Path,
        *,
        python: str = sys.executable,
        timeout_s: float = 900.0,
        allow_source_builds: bool = False,
    ) -> None:
        self.store = store
        self.envs_dir = Path(envs_dir)
        self.python = python
        self.timeout_s = timeout_s
        self.allow_source_builds = allow_source_builds

    async def environment_for(self, request: BuildRequest) -> Built:
        """The environment (built or reused) and the source, both as artifacts."""
        if request.git_dir is None:
            raise SourceError("the virtualenv builder reads the source from a local repository")
        env = await asyncio.to_thread(
            ensure_environment,
            request.requirements or b"",
            self.envs_dir,
            python=self.python,
            timeout_s=self.timeout_s,
            allow_source_builds=self.allow_source_builds,
        )
        environment = await self._stored_environment(env)
        source = await self._stored_source(request.git_dir, request.commit)
        return Built(
            environment=environment,
            source=source,
            reused=env.reused,
            seconds=env.seconds,
            log_path=env.log_path,
        )

    async def _stored_environment(self, env: Environment) -> str:
        """The environment's archive digest, archiving and storing it the first time."""
        recorded = env.path.with_name(env.path.name + _DIGEST_SUFFIX)
        if recorded.is_file():
            digest = check_digest(recorded.read_text().strip())
            # The store ages artifacts out: a recorded one that is gone is stored again.
            if await self.store.has(digest):
                return digest
        digest = await self._store_archive(lambda out: write_folder(env.path, out))
        partial = recorded.with_name(recorded.name + ".tmp")
        partial.write_text(digest + "\n")
        partial.replace(recorded)
        return digest

    async def _stored_source(self, git_dir: Path, commit: str) -> str:
        """The tree of the commit as an archive artifact."""
        return await self._store_archive(lambda out: write_archive(git_dir, commit, out))

    async def _store_archive(self, write: Callable[[IO[bytes]], object]) -> str:
        """Write an archive to a private temporary file, store it, return its digest."""
        fd, name = tempfile.mkstemp(prefix="secd-archive-", dir=self.envs_dir)
        try:
            with os.fdopen(os.dup(fd), "wb") as out:
                await asyncio.to_thread(write, out)
            return await self.store.put_fd(fd)
        finally:
            os.close(fd)
            os.unlink(name)

    async def close(self) -> None:
        """Nothing to close."""
