"""push.verified -> build.succeeded | run.failed.

Reads secd.yml and requirements.txt from the pushed commit and asks the builder port
(port.EnvironmentBuilder: a virtualenv on this machine, an image in Kubernetes, or the stub) for
what the run runs with. The plan names it, and the source, by digest; the build log goes into
the artifact store too. No path of this service's own folders leaves it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from secd_builder.port import BuildError, BuildRequest, EnvironmentBuilder
from secd_builder.source import SourceError, read_file_at
from secd_builder.spec import MAX_SPEC_BYTES, SpecError, parse_spec
from secd_shared.artifacts import ArtifactStore, artifact_store
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config, read_secret
from secd_shared.events import BuildSucceeded, PushVerified, RunPlan
from secd_shared.forge import ForgeError, repository_path
from secd_shared.service import Handlers
from secd_shared.worker import PermanentError

__all__ = ["Builder", "make_builder", "setup"]


def make_builder(config: Config, store: ArtifactStore) -> EnvironmentBuilder:
    """The adapter builder.kind names."""
    if config.builder.kind == "buildkit":
        from secd_builder.buildkit import BuildKitBuilder

        return BuildKitBuilder.from_config(config)
    if config.builder.kind == "stub":
        from secd_builder.stub import StubBuilder

        return StubBuilder()
    from secd_builder.venv import VenvBuilder

    return VenvBuilder(
        store,
        config.path(config.builder.envs_dir),
        python=config.builder.python or sys.executable,
        timeout_s=config.builder.timeout_s,
        allow_source_builds=config.builder.allow_source_builds,
    )


class Builder:
    """Prepares a run's environment and source, through the builder port."""

    def __init__(self, config: Config, store: ArtifactStore, builder: EnvironmentBuilder) -> None:
        self.store = store
        self.builder = builder
        self.forge_root = config.path(config.forge.root)
        self.work_dir = config.path(config.builder.work_dir)
        self.max_runfor_h = config.builder.max_runfor_h
        self.max_limits = config.limits.maximum()
        # forge.kind = "gitlab": the verified commit is fetched into a mirror of the builder's own.
        self.mirrors = None
        if config.forge.kind == "gitlab":
            from secd_shared.forge_git import GitMirrors

            gitlab = config.forge.gitlab
            self.mirrors = GitMirrors(
                config.path("builder/mirrors"),
                gitlab.url,
                read_secret(config, "forge.gitlab.token", gitlab.token, gitlab.token_file),
                skip_prefix=config.forge.results_prefix,
            )

    async def on_verified(self, stored: StoredEvent) -> list[BuildSucceeded]:
        """Build for one verified push."""
        push = stored.event.payload
        assert isinstance(push, PushVerified)
        try:
            request = await asyncio.to_thread(self._request, push, stored.event.run_id)
            built = await self.builder.environment_for(request)
        except (ForgeError, SourceError, SpecError) as exc:
            raise PermanentError(str(exc)) from None
        except UnicodeDecodeError:
            raise PermanentError("secd.yml is not UTF-8 text; save it as UTF-8") from None
        except BuildError as exc:
            raise PermanentError(f"build failed: {exc}", log_tail=exc.log_tail) from None
        build_log = await self._stored_log(built.log_path)
        return [
            BuildSucceeded(
                plan=RunPlan(
                    repository=push.repository,
                    ref=push.ref,
                    head=push.head,
                    commits=push.commits,
                    environment=built.environment,
                    source=built.source,
                    image=built.image,
                    spec=request.spec,
                ),
                reused=built.reused,
                build_log=build_log,
                build_s=round(built.seconds, 3),
            )
        ]

    def _request(self, push: PushVerified, run_id: str) -> BuildRequest:
        """What to build, read from the pushed commit (secd.yml checked here)."""
        if self.mirrors is not None:
            repo = self.mirrors.fetch(push.repository, [push.head])
        else:
            repo = repository_path(self.forge_root, push.repository)
        text = read_file_at(repo, push.head, "secd.yml", max_bytes=MAX_SPEC_BYTES)
        spec = parse_spec(
            text.decode() if text is not None else None,
            max_runfor_h=self.max_runfor_h,
            max_limits=self.max_limits,
        )
        return BuildRequest(
            run_id=run_id,
            researcher=push.researcher,
            repository=push.repository,
            ref=push.ref,
            commit=push.head,
            spec=spec,
            requirements=read_file_at(repo, push.head, "requirements.txt") or b"",
            has_dockerfile=read_file_at(repo, push.head, "Dockerfile") is not None,
            log_path=self.work_dir / run_id / "build.log",
            git_dir=repo,
        )

    async def _stored_log(self, path: Path | None) -> str:
        """The build log as an artifact ("" when there is none)."""
        if path is None:
            return ""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return ""
        try:
            return await self.store.put_fd(fd)
        finally:
            os.close(fd)


async def setup(config: Config, bus: EventBus) -> tuple[Handlers, Callable[[], Awaitable[None]]]:
    """The builder's one consumer, on the configured builder."""
    store = artifact_store(config, bus.js if bus is not None else None)
    builder = make_builder(config, store)
    return {"builder": Builder(config, store, builder).on_verified}, builder.close
