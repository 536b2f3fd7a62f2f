"""run.rejected | run.failed | outputs.released -> results.published.

Every run that reached the forge gets its outcome back in the repository, as branch
`secd/<run_id>`: what the airlock released of its outputs, the job log as the airlock let it
through, a manifest, what stays held for security officers (and why, in check names), and for a
failed or rejected run the reason in one line, so the researcher sees it where they work. Files
officers release later come as further commits on the same branch. Nothing the job wrote or
printed is published without the airlock's `outputs.released`. A push rejected because its
pusher is no researcher secd knows gets nothing: the repository may be anyone's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

from secd_publisher.branch import PublishError
from secd_publisher.forge import ForgeUnavailable, ResultsForge, make_results_forge
from secd_publisher.status import StatusReporter
from secd_shared.artifacts import ArtifactError, ArtifactStore, artifact_store
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.config import Config, ConfigError
from secd_shared.events import (
    AnyPayload,
    Event,
    HeldFile,
    OutputsChecked,
    OutputsHeld,
    OutputsReleased,
    PushReceived,
    ResultsExtended,
    ResultsPublished,
    RunFailed,
)
from secd_shared.forge import ForgeError
from secd_shared.runs import RunView, fold_run
from secd_shared.safepath import Beneath
from secd_shared.service import Handlers
from secd_shared.tail import log_tail
from secd_shared.worker import PermanentError, TransientError

log = logging.getLogger("secd.publisher")

__all__ = ["Publisher", "setup"]


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

    async def on_ended(self, stored: StoredEvent) -> list[ResultsPublished | ResultsExtended]:
        """Publish the outcome of one run, or add files officers released to its branch."""
        event = stored.event
        payload = event.payload
        if isinstance(payload, RunFailed) and (payload.outputs or payload.log):
            return []  # the job ran: its outputs and log leave through the airlock only
        run = await self.bus.read_run(event.run_id)
        events = [s.event for s in run]
        later = isinstance(payload, OutputsReleased) and not payload.first
        if not later and any(e.type == "results.published" for e in events):
            return []
        push = next((e.payload for e in events if e.type == "push.received"), None)
        if not isinstance(push, PushReceived):
            raise PermanentError("the run has no push.received event; nothing to publish to")
        rejected = next((e.payload for e in events if e.type == "run.rejected"), None)
        if getattr(rejected, "unknown_pusher", False):
            log.info(
                "nothing written to %s: the pusher is no researcher secd knows",
                push.repository,
                extra={"run_id": event.run_id},
            )
            return []
        view = fold_run(event.run_id, events)
        work = self.work_dir / event.run_id / event.id
        await asyncio.to_thread(shutil.rmtree, work, True)
        try:
            released, log_path = await self._fetch(payload, work)
            if later and isinstance(payload, OutputsReleased):
                commit = await asyncio.to_thread(self._extend, push, view, released, payload.by)
                # The further commit is in the audit log too: which files, by whom, where.
                return [
                    ResultsExtended(
                        repository=push.repository,
                        branch=f"{self.prefix}{view.run_id}",
                        commit=commit,
                        files=sorted(released),
                        by=list(payload.by),
                    )
                ]
            return [await asyncio.to_thread(self._publish, push, view, events, released, log_path)]
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

    async def _fetch(self, payload: AnyPayload, work: Path) -> tuple[dict[str, Path], Path | None]:
        """The released files and the checked log, from the store into this service's folder."""
        released: dict[str, Path] = {}
        log_path = None
        if not isinstance(payload, OutputsReleased):
            return released, None
        await asyncio.to_thread(work.mkdir, parents=True)
        for number, item in enumerate(payload.files):
            local = work / f"{number}.out"
            await self.store.get_file(item.artifact, local)
            released[f"output/{item.name}"] = local
        if payload.log:
            log_path = work / "job.log"
            await self.store.get_file(payload.log, log_path)
        return released, log_path

    def _extend(
        self, push: PushReceived, view: RunView, released: dict[str, Path], by: list[str]
    ) -> str:
        branch = f"{self.prefix}{view.run_id}"
        names = ", ".join(sorted(p.removeprefix("output/") for p in released))
        message = f"secd: released by security officers ({', '.join(by)})\n\n{names}\n"
        return self.forge.extend(push, branch, dict(released), message, self.author)

    def _publish(
        self,
        push: PushReceived,
        view: RunView,
        events: list[Event],
        released: dict[str, Path],
        log_path: Path | None,
    ) -> ResultsPublished:
        checked = next((e.payload for e in events if isinstance(e.payload, OutputsChecked)), None)
        held = [f for e in events if isinstance(e.payload, OutputsHeld) for f in e.payload.files]
        content: dict[str, Path | Beneath | bytes] = dict(released)
        if log_path is not None:
            content["secd-run.log"] = log_path
            # The job's output never enters the audit log; the tail of the checked log is read
            # here, for the researcher's summary only.
            view.log_tail = view.log_tail or log_tail(log_path)
        undeclared = checked.undeclared if checked else 0
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
            "files": sorted(released),
            "held": [{"name": f.name, "sha256": f.sha256, "why": f.reason} for f in held],
            "undeclared": undeclared,
        }
        content["secd-manifest.json"] = json.dumps(manifest, indent=2).encode() + b"\n"
        content["SECD-RESULT.md"] = _summary(view, held, undeclared).encode()
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


def _summary(view: RunView, held: list[HeldFile], undeclared: int) -> str:
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
    if held:
        lines += ["", "## Held by the airlock", ""]
        lines.append(
            f"{len(held)} file(s) stay on the secure side until security officers decide; "
            "released files arrive as later commits on this branch."
        )
        lines.append("")
        for item in held:
            lines.append(f"- {item.name} ({item.reason}), sha256 {item.sha256[:12]}")
    if undeclared:
        lines += [
            "",
            f"{undeclared} file(s) the job wrote are not declared in secd.yml's `outputs:` "
            "and are not released; declare the files you mean to release.",
        ]
    if view.log_tail:
        lines += ["", "## Last lines of the job log", "", "```", view.log_tail.rstrip(), "```"]
    return "\n".join(lines) + "\n"


async def setup(config: Config, bus: EventBus) -> Handlers:
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
