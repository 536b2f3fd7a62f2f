"""run.finished | run.failed -> outputs.checked, outputs.released, outputs.held;
review.recorded -> outputs.released | outputs.withheld; review.requested -> outputs.attacked.

Nothing a job wrote or printed reaches the researcher without passing here. The job's outputs
and log come from the artifact store by the digests the run's end names; only files declared in
secd.yml's `outputs:` can be released (others are counted, never named to the researcher);
every declared file and the log go through the automatic checks (secd_airlock.checks), against
the granted tables themselves (secd_airlock.sources). A file that passes every check is released
(`[airlock] auto_release`), one with a `review` verdict waits for `reviewers` security officers,
one with a `block` verdict for as many officers overriding it with a reason; any officer's
rejection withholds it. The job log goes out with the lines that failed a check replaced by
markers; officers see the whole log in the artifact store. An officer may ask for a dearer
attack on a held model (LiRA); its figures come back as outputs.attacked, for the officers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from secd_airlock.checks import (
    FileReport,
    Finding,
    Kind,
    OutputFile,
    Report,
    Rules,
    SourceIndex,
    Table,
    check_outputs,
    worst,
)
from secd_airlock.checks import replay as replay_check
from secd_airlock.checks.canaries import Canaries
from secd_airlock.checks.differencing import ReleasedTable
from secd_airlock.checks.filetype import reencode_image
from secd_airlock.checks.identifiers import check_identifier_values
from secd_airlock.checks.models import Attacker, check_lira, check_model
from secd_airlock.checks.sdc import SIDECAR_SUFFIX
from secd_airlock.modelenv import ModelEnvironment
from secd_airlock.released import FolderReleasedTables, MemoryReleasedTables, ReleasedTables
from secd_airlock.sources import SourceError, Sources
from secd_shared.artifacts import (
    MAX_MANIFEST_BYTES,
    ArtifactError,
    ArtifactStore,
    Tree,
    artifact_store,
)
from secd_shared.bus import EventBus, StoredEvent
from secd_shared.canaries import read_canary_key
from secd_shared.config import Config, ConfigError
from secd_shared.events import (
    AnyPayload,
    CheckedFile,
    CheckResult,
    CredentialsIssued,
    DeclaredOutput,
    Event,
    HeldFile,
    OutputsAttacked,
    OutputsChecked,
    OutputsHeld,
    OutputsReleased,
    OutputsWithheld,
    ReleasedFile,
    ReviewRecorded,
    ReviewRequested,
    RunFinished,
    Verdict,
    WithheldFile,
)
from secd_shared.outputs import declared_for
from secd_shared.runs import run_researcher
from secd_shared.service import Handlers
from secd_shared.worker import PermanentError, TransientError

log = logging.getLogger("secd.airlock")

__all__ = ["Airlock", "Decision", "decide", "load_rules", "setup"]

MAX_LOG_BYTES = 64 * 1024 * 1024
# What a file's verdict needs before it may leave.
ROUTES = {"pass": "automatic", "review": "review", "block": "override"}
_CHECKS_NAME = "airlock"
# Outputs the SDC checks read and the differencing record keeps.
_TABLE_KINDS = ("counts", "table")


def load_rules(values: dict[str, float]) -> Rules:
    """The site's `[airlock] rules`, checked against the names the checks know."""
    known = Rules.__dataclass_fields__
    for name in values:
        if name == "canary_rows":
            raise ConfigError(
                "airlock.rules.canary_rows is now [canaries] rows (with [canaries] key_file, read"
                " by the credentials service too); move it there"
            )
        if name not in known:
            raise ConfigError(
                f"airlock.rules.{name} is not a known rule; known: {', '.join(sorted(known))}"
            )
    fields = {k: type(getattr(Rules(), k))(v) for k, v in values.items()}
    return Rules(**fields)


def _results(findings: tuple[Finding, ...] | list[Finding]) -> list[CheckResult]:
    return [
        CheckResult(name=f.check, version=f.version, verdict=f.verdict, evidence=f.evidence)
        for f in findings
    ]


def _reason(report: FileReport) -> str:
    """One line for the researcher: which checks held the file (their names, no evidence)."""
    names = sorted({f.check for f in report.findings if f.verdict != "pass"})
    return f"{report.verdict}: {', '.join(names)}" if names else report.verdict


@dataclass(frozen=True)
class Decision:
    """What officers' reviews decide for one held file."""

    sha256: str
    outcome: str  # "release", "withhold" or "pending"
    officers: tuple[str, ...]
    reason: str = ""


def decide(held: HeldFile, reviews: list[ReviewRecorded], researcher: str, needed: int) -> Decision:
    """Two-person rule: `needed` different officers (never the researcher) approve; an override
    of a block needs a reason from each; one rejection withholds the file."""
    votes: dict[str, ReviewRecorded] = {}
    for review in reviews:
        if review.sha256 != held.sha256 or review.officer == researcher:
            continue
        votes.setdefault(review.officer, review)  # an officer's first vote counts
    rejected = [v for v in votes.values() if v.decision == "reject"]
    if rejected:
        return Decision(held.sha256, "withhold", (rejected[0].officer,), rejected[0].reason)
    approvals = [
        v
        for v in votes.values()
        if v.decision == "approve" and (held.route != "override" or v.reason.strip())
    ]
    if len(approvals) >= needed:
        return Decision(held.sha256, "release", tuple(sorted(v.officer for v in approvals)))
    return Decision(held.sha256, "pending", tuple(sorted(v.officer for v in approvals)))


class Airlock:
    """Checks each run's outputs and log, and applies officers' decisions."""

    def __init__(
        self,
        bus: EventBus,
        store: ArtifactStore,
        sources: Sources,
        rules: Rules,
        *,
        auto_release: bool = True,
        reviewers: int = 2,
        models: Attacker | None = None,
        released: ReleasedTables | None = None,
        canaries_key: bytes | None = None,
        canary_rows: int = 0,
    ) -> None:
        self.bus = bus
        self.store = store
        self.sources = sources
        self.rules = rules
        self.auto_release = auto_release
        self.reviewers = max(1, reviewers)
        # Where the model attacks run (None: every model is held for review).
        self.models = models
        # Each project's released tables (differencing), and the key of the runs' canary rows.
        self.released = released if released is not None else MemoryReleasedTables()
        self.canaries_key = canaries_key
        self.canary_rows = canary_rows

    def canaries(self, run_id: str) -> Canaries | None:
        """The run's canary rows (none without a canary key: `[canaries] rows` = 0)."""
        if not self.canaries_key or self.canary_rows <= 0:
            return None
        return Canaries.for_run(self.canaries_key, run_id, self.canary_rows)

    async def on_ended(self, stored: StoredEvent) -> list[AnyPayload]:
        """Check what the job wrote and printed; release what passes, hold the rest."""
        payload = stored.event.payload
        outputs, job_log = getattr(payload, "outputs", None), getattr(payload, "log", None)
        if not outputs and not job_log:
            return []  # the job never ran: the publisher reports the failure itself
        run = await self.bus.read_run(stored.event.run_id)
        if any(s.event.type == "outputs.checked" for s in run):
            return []
        issued = next(
            (s.event.payload for s in run if isinstance(s.event.payload, CredentialsIssued)), None
        )
        declared = list(issued.plan.spec.outputs) if issued else []
        try:
            files, undeclared, oversized = await self._declared_files(outputs, declared)
            log_bytes = (
                await self.store.get_bytes(job_log, max_bytes=MAX_LOG_BYTES) if job_log else b""
            )
        except ArtifactError as exc:
            raise PermanentError(f"the run's outputs cannot be read: {exc}") from None
        index, source_note = await self._index(issued)
        project = issued.plan.repository if issued else ""
        released = (
            await self.released.tables(project)
            if project and any(f.kind in _TABLE_KINDS for f, _ in files)
            else []
        )
        report = await asyncio.to_thread(
            functools.partial(
                check_outputs,
                released=released,
                canaries=self.canaries(stored.event.run_id),
            ),
            [f for f, _ in files],
            log_bytes,
            index,
            self.rules,
        )
        report = await self._check_models(report, files, issued)
        report = await self._check_replay(report, files, payload, issued)
        events = await self._outcome(report, index, files, oversized, undeclared, source_note)
        released_now = {f.sha256 for e in events if isinstance(e, OutputsReleased) for f in e.files}
        for file, _digest in files:
            if file.kind in _TABLE_KINDS and project:
                sha = hashlib.sha256(file.data).hexdigest()
                if sha in released_now:
                    await self._remember(
                        project, stored.event.run_id, file.name, file.kind, file.data
                    )
        return events

    async def _remember(
        self, project: str, run_id: str, name: str, kind: Kind, data: bytes
    ) -> None:
        """Keep a released counts or table output for the differencing check."""
        sha = hashlib.sha256(data).hexdigest()
        await self.released.add(project, ReleasedTable(name, sha, run_id, kind, data))

    async def _check_models(
        self,
        report: Report,
        files: list[tuple[OutputFile, str]],
        issued: CredentialsIssued | None,
    ) -> Report:
        """The model checks (secd_airlock.checks.models) on each output of kind model: its
        format, then the attacks against the granted tables, read for this and dropped after."""
        if not any(r.kind == "model" for r in report.files):
            return report
        tables = await self._model_tables(issued)
        data = {f.name: f.data for f, _ in files}
        checked = []
        for file_report in report.files:
            if file_report.kind == "model":
                model = await asyncio.to_thread(
                    check_model,
                    data[file_report.name],
                    tables,
                    self.rules,
                    self.models,
                    file_report.detected,
                )
                findings = (*file_report.findings, *model.findings)
                file_report = dataclasses.replace(
                    file_report, findings=findings, verdict=worst(findings)
                )
                log.info("model checked: %s in %.1f s", model.verdict, model.seconds)
            checked.append(file_report)
        return dataclasses.replace(report, files=tuple(checked))

    async def _model_tables(self, issued: CredentialsIssued | None) -> list[Table]:
        """The granted tables the model attacks read (at most model_max_rows rows each), read
        for one check and dropped after; none when the airlock cannot read the database."""
        if issued is None or not issued.granted or not self.sources.covers(issued.database):
            return []
        try:
            return await self.sources.tables(
                issued.database, issued.granted, int(self.rules.model_max_rows)
            )
        except SourceError as exc:
            raise TransientError(f"reading the granted tables for a model: {exc}") from None

    async def _check_replay(
        self,
        report: Report,
        files: list[tuple[OutputFile, str]],
        ended: object,
        issued: CredentialsIssued | None,
    ) -> Report:
        """Neighbour replay (secd_airlock.checks.replay): each declared file against the
        replay run's file of the same name. A run that had a replay account but no replay to
        compare with (it failed, or the replay did not run) has every file held for review."""
        if issued is None or not issued.replay_account or not report.files:
            return report
        tree = ended.replay_outputs if isinstance(ended, RunFinished) else ""
        theirs: dict[str, bytes] = {}
        if tree:
            try:
                manifest = await self.store.get_bytes(tree, max_bytes=MAX_MANIFEST_BYTES)
                wanted = {f.name for f, _ in files}
                for entry in Tree.decode(manifest).files:
                    if entry.path in wanted and entry.size <= self.rules.max_file_bytes:
                        theirs[entry.path] = await self.store.get_bytes(
                            entry.digest, max_bytes=self.rules.max_file_bytes
                        )
            except ArtifactError as exc:
                raise PermanentError(f"the replay's outputs cannot be read: {exc}") from None
        checked = []
        for file_report in report.files:
            if not tree:
                finding = replay_check.missing_replay(
                    "no replay run to compare with (the run failed or its replay did not run)"
                )
            else:
                other = theirs.get(file_report.name)
                mine = next(f.data for f, _ in files if f.name == file_report.name)
                if other is not None and file_report.kind == "figure" and file_report.release:
                    # Compared as released: both images without their metadata.
                    mine = file_report.release
                    with contextlib.suppress(Exception):
                        other = await asyncio.to_thread(reencode_image, other)
                finding = await asyncio.to_thread(
                    replay_check.compare, file_report.name, file_report.kind, mine, other
                )
            findings = (*file_report.findings, finding)
            checked.append(
                dataclasses.replace(file_report, findings=findings, verdict=worst(findings))
            )
        return dataclasses.replace(report, files=tuple(checked))

    async def _declared_files(
        self, outputs: str | None, declared: list[DeclaredOutput]
    ) -> tuple[list[tuple[OutputFile, str]], int, list[tuple[str, int, str]]]:
        """(file, its artifact digest) for every declared file, the number of undeclared ones,
        and (path, size, sha256) of declared files too big to read."""
        if not outputs:
            return [], 0, []
        tree = Tree.decode(await self.store.get_bytes(outputs, max_bytes=MAX_MANIFEST_BYTES))
        files, oversized, undeclared = [], [], 0
        by_path = {entry.path: entry for entry in tree.files}
        for entry in tree.files:
            declaration = declared_for(entry.path, declared)
            if declaration is None:
                undeclared += 1
                continue
            sha = entry.digest.removeprefix("sha256:")
            if entry.size > self.rules.max_file_bytes:
                oversized.append((entry.path, entry.size, sha))
                continue
            data = await self.store.get_bytes(entry.digest, max_bytes=self.rules.max_file_bytes)
            # A magnitude table's contributors: read as evidence, never released (undeclared).
            sidecar = by_path.get(entry.path + SIDECAR_SUFFIX)
            contributors = b""
            if declaration.kind in _TABLE_KINDS and sidecar is not None:
                if sidecar.size <= self.rules.max_file_bytes:
                    contributors = await self.store.get_bytes(
                        sidecar.digest, max_bytes=self.rules.max_file_bytes
                    )
                else:
                    contributors = b"(too large)"
            files.append(
                (OutputFile(entry.path, data, declaration.kind, contributors), entry.digest)
            )
        return files, undeclared, oversized

    async def _index(self, issued: CredentialsIssued | None) -> tuple[SourceIndex, str]:
        """The granted tables' index, or an empty one and why (then nothing passes on its own)."""
        if issued is None or not issued.granted:
            return SourceIndex.build(b"none", [], self.rules), ""
        if not self.sources.covers(issued.database):
            return SourceIndex.build(b"none", [], self.rules), (
                f"the airlock cannot read database {issued.database!r} to compare outputs with it"
            )
        try:
            return await self.sources.index(issued.database, issued.granted), ""
        except SourceError as exc:
            raise TransientError(f"fingerprinting the granted tables: {exc}") from None

    async def _outcome(
        self,
        report: Report,
        index: SourceIndex,
        files: list[tuple[OutputFile, str]],
        oversized: list[tuple[str, int, str]],
        undeclared: int,
        source_note: str,
    ) -> list[AnyPayload]:
        checked, released, held = [], [], []
        digests = dict((f.name, digest) for f, digest in files)
        run_findings = _results(report.run_findings)
        for file_report in report.files:
            verdict = file_report.verdict
            checks = _results(file_report.findings) + run_findings
            if source_note and verdict == "pass":
                verdict = "review"
                checks.append(
                    CheckResult(
                        name="source-match", version=0, verdict="review", evidence=source_note
                    )
                )
            if any(r.verdict == "block" for r in run_findings):
                verdict = "block"
            elif any(r.verdict == "review" for r in run_findings) and verdict == "pass":
                verdict = "review"
            route = ROUTES[verdict]
            if route == "automatic" and not self.auto_release:
                route = "review"
            name_shown = (
                file_report.name
                if verdict == "pass"
                else _held_name(file_report, index, self.rules)
            )
            checked.append(
                CheckedFile(
                    name=name_shown,
                    size=file_report.size,
                    sha256=file_report.sha256,
                    kind=file_report.kind,
                    checks=checks,
                    verdict=verdict,
                    route=route,
                )
            )
            if route == "automatic":
                artifact = await self._release_artifact(file_report, digests[file_report.name])
                released.append(
                    ReleasedFile(
                        name=file_report.name, sha256=file_report.sha256, artifact=artifact
                    )
                )
            else:
                held.append(
                    HeldFile(
                        sha256=file_report.sha256,
                        name=name_shown,
                        route=route,
                        reason=_reason(file_report),
                    )
                )
        for _path, size, sha in oversized:
            evidence = f"{size:,} bytes, more than the site's {self.rules.max_file_bytes:,}"
            checked.append(
                CheckedFile(
                    name="(withheld name)",
                    size=size,
                    sha256=sha,
                    kind="unread",
                    checks=[
                        CheckResult(name="type", version=1, verdict="block", evidence=evidence)
                    ],
                    verdict="block",
                    route="override",
                )
            )
            held.append(
                HeldFile(sha256=sha, name="(withheld name)", route="override", reason="block: size")
            )
        redacted = await self.store.put_bytes(report.redacted_log) if report.redacted_log else ""
        verdicts = [c.verdict for c in checked] + [report.log_verdict]
        overall: Verdict = (
            "block" if "block" in verdicts else "review" if "review" in verdicts else "pass"
        )
        events: list[AnyPayload] = [
            OutputsChecked(
                files=checked,
                log=_results(report.log_findings),
                redacted_log=redacted,
                undeclared=undeclared,
                verdict=overall,
            ),
        ]
        if held:
            events.append(OutputsHeld(files=held))
        # Last: the publisher reads the run when the release comes, and finds what is held.
        events.append(OutputsReleased(files=released, log=redacted, first=True))
        return events

    async def _release_artifact(self, report: FileReport, digest: str) -> str:
        """The artifact that leaves: the file's own, or its re-encoded copy (images)."""
        if report.release and hashlib.sha256(report.release).hexdigest() != report.sha256:
            return await self.store.put_bytes(report.release)
        return digest

    async def on_review(self, stored: StoredEvent) -> list[AnyPayload]:
        """Apply officers' votes: release or withhold each held file once it is decided."""
        run = await self.bus.read_run(stored.event.run_id)
        events = [s.event for s in run]
        researcher = run_researcher(events)
        held = [f for e in events if isinstance(e.payload, OutputsHeld) for f in e.payload.files]
        reviews = [e.payload for e in events if isinstance(e.payload, ReviewRecorded)]
        done = {
            f.sha256
            for e in events
            if isinstance(e.payload, OutputsReleased | OutputsWithheld)
            for f in e.payload.files
        }
        checked = next((e.payload for e in events if isinstance(e.payload, OutputsChecked)), None)
        out: list[AnyPayload] = []
        for item in held:
            if item.sha256 in done:
                continue
            decision = decide(item, reviews, researcher, self.reviewers)
            if decision.outcome == "release":
                path, artifact = await self._held_artifact(stored, item, checked)
                await self._remember_held(
                    events, stored.event.run_id, item, path, artifact, checked
                )
                out.append(
                    OutputsReleased(
                        files=[ReleasedFile(name=path, sha256=item.sha256, artifact=artifact)],
                        by=list(decision.officers),
                    )
                )
            elif decision.outcome == "withhold":
                out.append(
                    OutputsWithheld(
                        files=[
                            WithheldFile(
                                sha256=item.sha256, name=item.name, reason=decision.reason[:300]
                            )
                        ],
                        by=list(decision.officers),
                    )
                )
            done.add(item.sha256)
        return out

    async def on_request(self, stored: StoredEvent) -> list[AnyPayload]:
        """Run the attack an officer asked for (review.requested) on one held model and record
        its figures (outputs.attacked). Never fails the run: an attack that cannot run is an
        outputs.attacked saying why, and a review verdict."""
        request = stored.event.payload
        if not isinstance(request, ReviewRequested):
            return []
        run = await self.bus.read_run(stored.event.run_id)
        if any(
            isinstance(s.event.payload, OutputsAttacked)
            and s.event.payload.request == stored.event.id
            for s in run
        ):
            return []  # answered already (a redelivery)
        events = [s.event for s in run]

        def answer(verdict: Verdict, evidence: str, figures: dict[str, float]) -> OutputsAttacked:
            return OutputsAttacked(
                sha256=request.sha256,
                attack=request.attack,
                verdict=verdict,
                evidence=evidence,
                figures=figures,
                request=stored.event.id,
            )

        held = any(
            f.sha256 == request.sha256
            for e in events
            if isinstance(e.payload, OutputsHeld)
            for f in e.payload.files
        )
        checked = next((e.payload for e in events if isinstance(e.payload, OutputsChecked)), None)
        kind = next(
            (f.kind for f in (checked.files if checked else []) if f.sha256 == request.sha256), ""
        )
        if not held or kind != "model":
            return [
                answer("review", f"{request.attack} was not run: the file is no held model", {})
            ]
        try:
            data = await self._held_bytes(run, request.sha256)
        except PermanentError as exc:
            return [answer("review", f"{request.attack} was not run: {exc.reason}", {})]
        issued = next((e.payload for e in events if isinstance(e.payload, CredentialsIssued)), None)
        tables = await self._model_tables(issued)
        from secd_airlock.checks import sniff

        report = await asyncio.to_thread(
            check_lira, data, tables, self.rules, self.models, sniff(data)
        )
        log.info("LiRA on a held model: %s in %.1f s", report.verdict, report.seconds)
        (finding,) = report.findings
        return [answer(finding.verdict, finding.evidence, dict(report.figures))]

    async def _held_bytes(self, run: list[StoredEvent], sha256: str) -> bytes:
        """A held file's own bytes, found by sha256 in the run's outputs tree."""
        ended = next(
            (s.event.payload for s in run if s.event.type in ("run.finished", "run.failed")), None
        )
        outputs = getattr(ended, "outputs", None)
        if not outputs:
            raise PermanentError("the run's outputs are gone")
        try:
            tree = Tree.decode(await self.store.get_bytes(outputs, max_bytes=MAX_MANIFEST_BYTES))
            for entry in tree.files:
                if entry.digest.removeprefix("sha256:") == sha256:
                    return await self.store.get_bytes(
                        entry.digest, max_bytes=self.rules.max_file_bytes
                    )
        except ArtifactError as exc:
            raise PermanentError(f"the run's outputs cannot be read: {exc}") from None
        raise PermanentError("the file is not among the run's outputs")

    async def _remember_held(
        self,
        events: list[Event],
        run_id: str,
        item: HeldFile,
        path: str,
        artifact: str,
        checked: OutputsChecked | None,
    ) -> None:
        """Keep a counts or table output that officers released, for the differencing check."""
        kinds = {f.sha256: f.kind for f in checked.files} if checked else {}
        issued = next((e.payload for e in events if isinstance(e.payload, CredentialsIssued)), None)
        if issued is None or kinds.get(item.sha256) not in _TABLE_KINDS:
            return
        kind: Kind = "counts" if kinds[item.sha256] == "counts" else "table"
        data = await self.store.get_bytes(artifact, max_bytes=self.rules.max_file_bytes)
        await self._remember(issued.plan.repository, run_id, path, kind, data)

    async def _held_artifact(
        self, stored: StoredEvent, item: HeldFile, checked: OutputsChecked | None
    ) -> tuple[str, str]:
        """The real path and artifact of a held file, from the run's outputs tree."""
        run = await self.bus.read_run(stored.event.run_id)
        ended = next(
            (s.event.payload for s in run if s.event.type in ("run.finished", "run.failed")), None
        )
        outputs = getattr(ended, "outputs", None)
        if not outputs:
            raise PermanentError("the run's outputs are gone; the file cannot be released")
        try:
            tree = Tree.decode(await self.store.get_bytes(outputs, max_bytes=MAX_MANIFEST_BYTES))
        except ArtifactError as exc:
            raise PermanentError(f"the run's outputs cannot be read: {exc}") from None
        for entry in tree.files:
            if entry.digest.removeprefix("sha256:") == item.sha256:
                data = await self.store.get_bytes(entry.digest, max_bytes=2 * 1024**3)
                from secd_airlock.checks import reencode_image, sniff

                if sniff(data) in ("png", "jpeg"):
                    return entry.path, await self.store.put_bytes(reencode_image(data))
                return entry.path, entry.digest
        raise PermanentError(f"no output with sha256 {item.sha256[:12]}... in the run")


def _held_name(report: FileReport, index: SourceIndex, rules: Rules) -> str:
    """A held file's name as the researcher may see it: a name can carry data too, so only a
    name that passes the source and identifier checks on its own is shown."""
    words = " ".join(re.split(r"[/_.\-\s]+", report.name))
    if index.scan([words]).rows or check_identifier_values(report.name, rules, "in the name"):
        return "(withheld name)"
    return report.name


def read_key(path: Path) -> bytes:
    """The fingerprint key: at least 32 bytes of a file only the airlock reads."""
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ConfigError(f"{path} holds a key shorter than 32 bytes")
    return key


async def setup(config: Config, bus: EventBus) -> tuple[Handlers, Callable[[], Awaitable[None]]]:
    """Two consumers of the log (runs' ends, officers' reviews) and one of the job logs."""
    from secd_airlock.livelog import LiveLog

    settings = config.airlock
    try:
        rules = load_rules(settings.rules)
        key = read_key(config.path(settings.key_file))
        # Its own key, which the credentials service reads too (never the fingerprint key).
        canaries_key = read_canary_key(config)
    except (ConfigError, OSError) as exc:
        raise SystemExit(f"secd-airlock: {exc}") from None
    sources = Sources(settings.databases, key, rules)
    airlock = Airlock(
        bus,
        artifact_store(config, bus.js),
        sources,
        rules,
        auto_release=settings.auto_release,
        reviewers=settings.reviewers,
        models=ModelEnvironment(
            config.path(settings.model_env_dir),
            python=Path(settings.model_python) if settings.model_python else None,
            timeout_s=settings.model_timeout_s,
        ),
        released=FolderReleasedTables(config.path(settings.released_dir)),
        canaries_key=canaries_key,
        canary_rows=config.canaries.rows,
    )
    live = LiveLog(bus, sources, rules, canaries_key=canaries_key, canary_rows=config.canaries.rows)
    task = asyncio.create_task(live.run())

    async def stop() -> None:
        live.stop()
        await asyncio.gather(task, return_exceptions=True)

    handlers: Handlers = {
        "airlock": airlock.on_ended,
        "airlock-reviews": airlock.on_review,
        "airlock-requests": airlock.on_request,
    }
    return handlers, stop
