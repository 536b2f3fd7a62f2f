"""run.finished | run.failed | run.rejected -> results.published.

Every run that reached the forge gets its outcome back in the repository, as branch
`secd/<run_id>`: the outputs, the job log, a manifest, and for a failed or rejected run the reason
in one line with the log's tail, so the researcher sees it where they work. A push rejected
because its pusher is no researcher secd knows gets nothing: the repository may be anyone's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path

from secd_publisher.branch import PublishError
from secd_publisher.forge import ForgeUnavailable, ResultsForge, make_results_forge
from secd_publisher.status import StatusReporter
from secd_shared.artifacts import ArtifactError, ArtifactStore, artifact_store, get_tree
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config, ConfigError
from secd_shared.events import PushReceived, ResultsPublished
from secd_shared.forge import ForgeError
from secd_shared.runs import RunView, fold_run
from secd_shared.safepath import Beneath, PathRefused, open_beneath, regular_files
from secd_shared.tail import log_tail
from secd_shared.worker import PermanentError, TransientError

log = logging.getLogger("secd.publisher")

__all__ = ["Publisher", "collect_outputs", "setup"]

MAX_OUTPUT_BYTES = 2 * 1024**3


def collect_outputs(output: Path) -> tuple[dict[str, Beneath], list[dict]]:
    """Regular files under the run's output, and what was left out and why.

    The job controlled this folder: a symlink or device here must never make us (outside the
    sandbox) read a file of the host, so only regular files are taken, reached below the
    output folder without following any link (secd_shared.safepath), now and when read.
    """
    files: dict[str, Beneath] = {}
    excluded: list[dict] = []
    total = 0
    try:
        fd = open_beneath(output.parent, [output.name])
    except (PathRefused, OSError):
        return files, excluded
    skipped: list[str] = []
    try:
        for rel, _folder_fd, info in regular_files(fd, skipped):
            if total + info.st_size > MAX_OUTPUT_BYTES:
                excluded.append({"path": rel, "reason": "outputs exceed 2 GiB in all"})
                continue
            total += info.st_size
            files[f"output/{rel}"] = Beneath(output, tuple(rel.split("/")))
    finally:
        os.close(fd)
    excluded += [{"path": p, "reason": "not a regular file (link or device)"} for p in skipped]
    return files, excluded


class Publisher:
    """Writes each run's outcome to its repository."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        forge: ResultsForge | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self.bus = bus
        # The embedded forge's repositories, or GitLab (forge.kind).
        self.forge = forge if forge is not None else make_results_forge(config)
        # Outputs and logs come from the artifact store, by the digests the run's end names.
        self.store = store if store is not None else artifact_store(config, bus.js)
        self.prefix = config.forge.results_prefix
        self.author = (config.publisher.author_name, config.publisher.author_email)
        self.work_dir = config.path(config.publisher.work_dir)

    async def on_ended(self, stored: StoredEvent) -> list[ResultsPublished]:
        """Publish the outcome of one run."""
        run = await self.bus.read_run(stored.event.run_id)
        events = [s.event for s in run]
        if any(e.type == "results.published" for e in events):
            return []
        push = next((e.payload for e in events if e.type == "push.received"), None)
        if not isinstance(push, PushReceived):
            raise PermanentError("the run has no push.received event; nothing to publish to")
        rejected = next((e.payload for e in events if e.type == "run.rejected"), None)
        if getattr(rejected, "unknown_pusher", False):
            log.info(
                "nothing written to %s: the pusher is no researcher secd knows",
                push.repository,
                extra={"run_id": stored.event.run_id},
            )
            return []
        view = fold_run(stored.event.run_id, events)
        terminal = next(
            e for e in reversed(events) if e.type in ("run.finished", "run.failed", "run.rejected")
        )
        work = self.work_dir / stored.event.run_id
        await asyncio.to_thread(shutil.rmtree, work, True)
        try:
            output, log_path = await self._fetch(terminal.payload, work)
            return [await asyncio.to_thread(self._publish, push, view, output, log_path)]
        except ArtifactError as exc:
            # Aged out of the store, or damaged: a retry would find the same.
            raise PermanentError(f"the run's results cannot be read: {exc}") from None
        except ForgeError as exc:
            raise PermanentError(str(exc)) from None
        except ForgeUnavailable as exc:
            raise TransientError(str(exc)) from None
        except PublishError as exc:
            raise PermanentError(f"the results could not be written: {exc}") from None
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _fetch(self, payload, work: Path) -> tuple[Path | None, Path | None]:
        """The run's outputs and log, from the store into this service's own folder."""
        outputs = getattr(payload, "outputs", None)
        job_log = getattr(payload, "log", None)
        output = log_path = None
        if outputs:
            output = work / "output"
            await get_tree(self.store, outputs, output)
        if job_log:
            log_path = work / "job.log"
            await self.store.get_file(job_log, log_path)
        return output, log_path

    def _publish(
        self, push: PushReceived, view: RunView, output: Path | None, log_path: Path | None
    ) -> ResultsPublished:
        files, excluded = collect_outputs(output) if output else ({}, [])
        content: dict[str, Path | Beneath | bytes] = dict(files)
        if log_path is not None:
            content["secd-run.log"] = log_path
            # The job's output never enters the audit log; its tail is read here, for the
            # researcher's summary only.
            view.log_tail = view.log_tail or log_tail(log_path)
        manifest = {
            "run_id": view.run_id,
            "outcome": view.outcome,
            "reason": view.reason,
            "researcher": view.actor,
            "project": push.repository,
            "ref": push.ref,
            "head": push.after,
            "commits": view.commits,
            "environment": view.environment,
            "exit_code": view.exit_code,
            "granted": view.granted,
            "refused": view.refused,
            "stages_s": {k: round(v, 3) for k, v in view.stages.items()},
            "files": sorted(files),
            "excluded": excluded,
        }
        content["secd-manifest.json"] = json.dumps(manifest, indent=2).encode() + b"\n"
        content["SECD-RESULT.md"] = _summary(view, excluded).encode()
        branch = f"{self.prefix}{view.run_id}"
        commit = self.forge.publish(
            push,
            branch,
            content,
            f"secd: {view.outcome} run {view.run_id}\n\n{view.reason or 'ok'}\n",
            self.author,
        )
        return ResultsPublished(
            repository=push.repository,
            branch=branch,
            commit=commit,
            outcome=view.outcome or "unknown",
            files=sorted(content),
        )


def _summary(view: RunView, excluded: list[dict]) -> str:
    lines = [f"# secd run {view.run_id}: {view.outcome}", ""]
    if view.reason:
        lines += [f"**Why:** {view.reason}", ""]
    lines += [f"- commit: `{view.head}` on `{view.ref}`", f"- researcher: {view.actor}"]
    if view.granted:
        lines.append(f"- tables granted: {', '.join(view.granted)}")
    for refusal in view.refused:
        lines.append(f"- not granted: {refusal['name']}: {refusal['reason']}")
    if view.exit_code is not None:
        lines.append(f"- exit code: {view.exit_code}")
    for item in excluded:
        lines.append(f"- left out of the results: {item['path']}: {item['reason']}")
    if view.log_tail:
        lines += ["", "## Last lines of the job log", "", "```", view.log_tail.rstrip(), "```"]
    return "\n".join(lines) + "\n"


async def setup(config: Config, bus: EventBus):
    """Two consumers: results at a run's end, the forge's commit status at every stage."""
    try:
        forge = make_results_forge(config)
    except ConfigError as exc:
        raise SystemExit(f"secd-publisher: {exc}") from None
    statuses = StatusReporter(
        bus, forge, config.forge.results_prefix, accounts=config.forge.accounts
    )
    return {
        "publisher": Publisher(config, bus, forge, artifact_store(config, bus.js)).on_ended,
        "publisher-status": statuses.on_event,
    }
