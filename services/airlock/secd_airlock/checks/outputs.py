"""Every check over a run's outputs and its log: what the airlock service calls."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from . import filetype
from .acro import AcroClaim, acro_claims, check_claim
from .base import Finding, Kind, OutputFile, Rules, Verdict, count_words, worst
from .canaries import Canaries, check_canaries
from .differencing import ReleasedTable, check_differencing
from .disguises import column_readings, readings
from .encodings import check_encodings, find_encoded
from .filetype import (
    TEXT_TYPES,
    check_run_size,
    check_type,
    image_text,
    reencode_image,
    sniff,
    sniff_text,
)
from .identifiers import NAME as IDENTIFIERS
from .identifiers import check_identifier_values
from .logs import redact_log
from .sdc import Shown, check_sdc, frequency_table, plain_label
from .source import SourceIndex, check_source
from .tables import check_table, parse_table

LOG_NAME = "secd-run.log"


@dataclass(frozen=True)
class FileReport:
    """The checks' word on one output file. `release` is what may leave if it is released:
    the bytes themselves, or for an image its re-encoded pixels."""

    name: str
    size: int
    sha256: str
    kind: Kind
    detected: str
    findings: tuple[Finding, ...]
    verdict: Verdict
    release: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class Report:
    """The checks' word on a run: each file, the log (and the log as the researcher may see
    it), and the run as a whole (its total size)."""

    files: tuple[FileReport, ...]
    log_findings: tuple[Finding, ...]
    redacted_log: bytes
    run_findings: tuple[Finding, ...]

    @property
    def log_verdict(self) -> Verdict:
        """The log's verdict."""
        return worst(self.log_findings)

    @property
    def verdict(self) -> Verdict:
        """The strictest verdict of the run's files, log and run-level findings."""
        return worst(
            [*self.log_findings, *self.run_findings, *(f for r in self.files for f in r.findings)]
        )


def json_lines(value: object) -> Iterator[str]:
    """A JSON document as lines of text, one per record (an object or array of scalars, keys
    included: a key can carry data), so tuple matching sees a record together and escaped
    characters read as themselves."""
    if isinstance(value, dict):
        scalars: list[object] = [str(k) for k in value]
        children: list[object] = []
        for v in value.values():
            (children if isinstance(v, dict | list) else scalars).append(v)
    elif isinstance(value, list):
        scalars, children = [], []
        for v in value:
            (children if isinstance(v, dict | list) else scalars).append(v)
    else:
        yield str(value)
        return
    if scalars:
        yield " , ".join("" if v is None else str(v) for v in scalars)
    for child in children:
        yield from json_lines(child)


def _readable(text: str, detected: str) -> str:
    """The text the scans read: a JSON document as its values, other text as it is."""
    if detected == "json":
        try:
            return "\n".join(json_lines(json.loads(text)))
        except (ValueError, RecursionError):
            return text
    return text


def _scan_text(
    text: str, detected: str, file: OutputFile, rules: Rules, texts: list[str]
) -> list[Finding]:
    """Tables, identifiers and encodings of one text; what the source match must also read is
    added to `texts`."""
    findings = []
    readable = _readable(text, detected)
    # What the text says once undisguised (spaced digits, escapes, character codes...) is read
    # by the source match and the identifier check as the text itself is.
    undisguised = readings(readable)
    table = parse_table(text, detected) if detected in ("csv", "tsv", "json") else None
    if table is not None:
        findings += check_table(table, rules)
        undisguised += column_readings(table.columns, table.rows)
    texts += [readable, *undisguised]
    findings += check_identifier_values("\n".join([readable, *undisguised]), rules)
    decoded, opaque = find_encoded(text, rules)
    findings += check_encodings(decoded, opaque)
    for item in decoded:
        if item.text is None:
            continue
        inner_readable = _readable(item.text, sniff_text(item.text))
        inner_undisguised = readings(inner_readable)
        texts += [inner_readable, *inner_undisguised]
        findings += check_identifier_values(
            "\n".join([item.text, *inner_undisguised]), rules, "in decoded content"
        )
        inner = parse_table(item.text, sniff_text(item.text))
        if inner is not None and len(inner.rows) > 1:
            findings += [
                Finding(f.check, f.version, f.verdict, f"{f.evidence} in decoded content")
                for f in check_table(inner, rules)
            ]
    return findings


def _scan_model(data: bytes, rules: Rules, texts: list[str]) -> list[Finding]:
    """A skops model: its text members are scanned; large arrays may hold training rows."""
    findings = []
    array_bytes = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.filename.endswith((".json", ".txt")):
                texts.append(archive.read(info).decode("utf-8", "replace"))
            else:
                array_bytes += info.file_size
    if array_bytes > rules.max_cells * 8:
        findings.append(
            Finding(
                filetype.NAME,
                filetype.VERSION,
                "review",
                f"the model stores {array_bytes:,} bytes of arrays: it may hold training rows",
            )
        )
    return findings


def _name_text(name: str) -> str:
    """A file name as words: its folders and stem (an extension would join the last word)."""
    path = PurePosixPath(name)
    return " ".join([*path.parent.parts, path.stem if path.suffix else path.name])


def label_shown(index: SourceIndex, rules: Rules) -> Shown:
    """Whether a table's label may be quoted in evidence: plain and short, no identifier-like
    value, nothing the granted tables hold as a rare value."""
    seen: dict[str, bool] = {}

    def shown(label: str) -> bool:
        if label not in seen:
            seen[label] = (
                plain_label(label)
                and not index.scan_text(label).tables
                and not check_identifier_values(label, rules)
            )
        return seen[label]

    return shown


def _check_statistics(
    text: str,
    detected: str,
    file: OutputFile,
    sha256: str,
    shown: Shown,
    rules: Rules,
    released: Sequence[ReleasedTable],
    claim: AcroClaim | None,
) -> list[Finding]:
    """Statistical disclosure control of a `kind: counts` or `kind: table` output (or a table
    ACRO wrote), and differencing against the project's released tables."""
    if file.kind not in ("counts", "table") and claim is None:
        return []
    counts = file.kind == "counts" or (claim is not None and claim.counts)
    table = parse_table(text, detected) if detected in ("csv", "tsv", "json") else None
    if table is None:
        if counts:
            return [Finding("sdc-threshold", 1, "review", "declared counts but holds no table")]
        return []
    findings = check_sdc(table, rules, counts=counts, contributors=file.contributors, shown=shown)
    frequencies = frequency_table(table, counts=counts)
    if frequencies is not None and released:
        findings += check_differencing(frequencies, sha256, released, rules, shown)
    if claim is not None:
        findings += check_claim(claim, findings)
    return findings


def check_file(
    file: OutputFile,
    index: SourceIndex,
    rules: Rules,
    *,
    released: Sequence[ReleasedTable] = (),
    canaries: Canaries | None = None,
    claim: AcroClaim | None = None,
) -> FileReport:
    """Every check that applies to one output file: `released` are the project's earlier
    released tables (differencing), `canaries` the run's canary rows, `claim` what ACRO's
    results.json said of this file."""
    findings = check_type(file, rules)
    detected = sniff(file.data)
    release = file.data
    sha256 = hashlib.sha256(file.data).hexdigest()
    # The name is read too: a file name can carry data.
    texts = [_name_text(file.name)]
    findings += check_identifier_values(file.name, rules, "in the file name")
    if detected in TEXT_TYPES:
        text = file.data.decode("utf-8")
        findings += _scan_text(text, detected, file, rules, texts)
        shown = label_shown(index, rules)
        findings += _check_statistics(text, detected, file, sha256, shown, rules, released, claim)
    elif detected in ("png", "jpeg"):
        extra, trailing = image_text(file.data)
        for chunk in extra:
            findings += _scan_text(chunk, sniff_text(chunk), file, rules, texts)
        if trailing:
            tail = file.data[-trailing:].decode("utf-8", "replace")
            findings += _scan_text(tail, sniff_text(tail), file, rules, texts)
            findings.append(
                Finding(
                    filetype.NAME,
                    filetype.VERSION,
                    "review",
                    f"{count_words(trailing, 'byte')} follow the end of the image",
                )
            )
        try:
            release = reencode_image(file.data)
        except (OSError, ValueError, SyntaxError):
            findings.append(
                Finding(filetype.NAME, filetype.VERSION, "block", "the image cannot be decoded")
            )
            release = b""
    elif detected == "skops":
        findings += _scan_model(file.data, rules, texts)
    elif file.kind == "counts":
        findings.append(Finding("sdc-threshold", 1, "review", "declared counts but holds no table"))
    findings += check_source(index.scan(texts), rules)
    findings += check_canaries(texts, canaries)
    return FileReport(
        name=file.name,
        size=len(file.data),
        sha256=sha256,
        kind=file.kind,
        detected=detected,
        findings=tuple(findings),
        verdict=worst(findings),
        release=release,
    )


def acro_claims_of(files: Sequence[OutputFile]) -> dict[str, AcroClaim]:
    """ACRO's claims in any results.json among the outputs, by the base name of the file each
    names."""
    claims: dict[str, AcroClaim] = {}
    for file in files:
        if PurePosixPath(file.name).name == "results.json" and sniff(file.data) == "json":
            for claim in acro_claims(file.data) or []:
                claims[claim.file] = claim
    return claims


def check_outputs(
    files: list[OutputFile],
    log: bytes,
    index: SourceIndex,
    rules: Rules | None = None,
    *,
    released: Sequence[ReleasedTable] = (),
    canaries: Canaries | None = None,
) -> Report:
    """Every check over a run's declared output files and its log; `released` are the
    project's earlier released tables, `canaries` the run's canary rows."""
    rules = rules or index.rules
    claims = acro_claims_of(files)
    reports = tuple(
        check_file(
            f,
            index,
            rules,
            released=released,
            canaries=canaries,
            claim=claims.get(PurePosixPath(f.name).name),
        )
        for f in files
    )
    text = log.decode("utf-8", "replace")
    redacted, log_findings = redact_log(text, index, rules, canaries)
    # The log is an output like any other: the same scans as a text file, after the line checks.
    texts: list[str] = []
    as_file = OutputFile(LOG_NAME, log, "text")
    whole = _scan_text(text, "txt", as_file, rules, texts)
    whole += check_source(index.scan(texts[1:]), rules, "in decoded content of the log")
    whole += check_canaries(texts, canaries, "in the log")
    for finding in whole:
        # redact_log has counted the log's identifier values already.
        if finding not in log_findings and finding.check != IDENTIFIERS:
            log_findings.append(finding)
    return Report(
        files=reports,
        log_findings=tuple(log_findings),
        redacted_log=redacted.encode(),
        run_findings=tuple(check_run_size(files, rules)),
    )
