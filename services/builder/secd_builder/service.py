"""push.verified -> build.succeeded | run.failed.

Reads secd.yml and requirements.txt from the pushed commit, makes (or reuses) the environment for
the requirements' hash, and exports the source the run will see, read-only.
"""

from __future__ import annotations

import asyncio
import sys

from secd_builder.environment import BuildError, ensure_environment
from secd_builder.source import SourceError, export_source, read_file_at
from secd_builder.spec import MAX_SPEC_BYTES, SpecError, parse_spec
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config
from secd_shared.events import BuildSucceeded, PushVerified, RunPlan
from secd_shared.forge import ForgeError, repository_path
from secd_shared.worker import PermanentError

__all__ = ["Builder", "setup"]


class Builder:
    """Prepares a run's environment and source."""

    def __init__(self, config: Config) -> None:
        self.forge_root = config.path(config.forge.root)
        self.envs_dir = config.path(config.builder.envs_dir)
        self.work_dir = config.path(config.builder.work_dir)
        self.python = config.builder.python or sys.executable
        self.timeout_s = config.builder.timeout_s
        self.max_runfor_h = config.builder.max_runfor_h
        self.max_limits = config.limits.maximum()
        self.allow_source_builds = config.builder.allow_source_builds
        # forge.kind = "gitlab": the verified commit is fetched into a mirror of the builder's own.
        self.mirrors = None
        if config.forge.kind == "gitlab":
            from secd_shared.config import read_secret
            from secd_shared.forge_git import GitMirrors

            gitlab = config.forge.gitlab
            self.mirrors = GitMirrors(
                config.path("builder/mirrors"),
                gitlab.url,
                read_secret(config, "forge.gitlab.token", gitlab.token, gitlab.token_file),
                skip_prefix=config.forge.results_prefix,
            )
        # builder.kind = "buildkit": images built in Kubernetes instead of local virtualenvs.
        self.image_builder = None
        if config.builder.kind == "buildkit":
            from secd_builder.buildkit import BuildKitBuilder

            self.image_builder = BuildKitBuilder.from_config(config)

    async def on_verified(self, stored: StoredEvent) -> list[BuildSucceeded]:
        """Build for one verified push."""
        return [await asyncio.to_thread(self._build, stored)]

    def _build(self, stored: StoredEvent) -> BuildSucceeded:
        push = stored.event.payload
        assert isinstance(push, PushVerified)
        try:
            return self._prepare(push, stored.event.run_id)
        except (ForgeError, SourceError, SpecError) as exc:
            raise PermanentError(str(exc)) from None
        except UnicodeDecodeError:
            raise PermanentError("secd.yml is not UTF-8 text; save it as UTF-8") from None
        except BuildError as exc:
            raise PermanentError(f"build failed: {exc}", log_tail=exc.log_tail) from None

    def _prepare(self, push: PushVerified, run_id: str) -> BuildSucceeded:
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
        requirements = read_file_at(repo, push.head, "requirements.txt") or b""
        if self.image_builder is not None:
            from secd_builder.buildkit import image_plan

            return image_plan(
                self.image_builder,
                push,
                run_id,
                spec=spec,
                requirements=requirements,
                has_dockerfile=read_file_at(repo, push.head, "Dockerfile") is not None,
                log_dir=self.work_dir,
            )
        env = ensure_environment(
            requirements,
            self.envs_dir,
            python=self.python,
            timeout_s=self.timeout_s,
            allow_source_builds=self.allow_source_builds,
        )
        source = export_source(repo, push.head, self.work_dir / run_id / "src")
        return BuildSucceeded(
            plan=RunPlan(
                repository=push.repository,
                ref=push.ref,
                head=push.head,
                commits=push.commits,
                environment=env.key,
                env_path=str(env.path),
                source_path=str(source),
                spec=spec,
            ),
            reused=env.reused,
            build_log=str(env.log_path),
            build_s=round(env.seconds, 3),
        )


async def setup(config: Config, _bus: EventBus):
    """The builder's one consumer."""
    return {"builder": Builder(config).on_verified}
