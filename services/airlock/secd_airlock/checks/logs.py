"""Logs: the job log is an output like any other, and the live stream passes each line through
`check_line` before the researcher sees it. A line that matches the source or looks encoded is
replaced by a marker naming the check; officers keep the full log."""

from __future__ import annotations

from dataclasses import replace

from . import encodings, identifiers, source
from .base import Finding, Rules, count_words, worst
from .canaries import Canaries, check_canaries
from .disguises import readings
from .encodings import check_encodings, find_encoded
from .identifiers import check_identifier_values, find_personnummer
from .source import SourceIndex, check_source

NAME = "log"
VERSION = 2  # 2: lines are read undisguised too (checks/disguises.py)


def marker(check: str) -> str:
    """What the researcher sees instead of a withheld line."""
    return f"[secd airlock: line withheld ({check})]"


def check_line(
    line: str, index: SourceIndex, rules: Rules, canaries: Canaries | None = None
) -> Finding | None:
    """The strictest finding for one log line, None when it may be shown. Fast: the line's
    words are hashed once (and cached), decoding runs only on lines with a long run. A line
    with a value of the run's `canaries` blocks."""
    found_canary = check_canaries([line], canaries, "in a line of the log")
    if found_canary:
        return found_canary[0]
    undisguised = readings(line)
    match = index.scan([line, *undisguised])
    if match.tables:
        found = _strictest(check_source(match, replace(rules, match_rows_review=1)), "a line")
        if found:
            return found
    if any(find_personnummer(text) for text in (line, *undisguised)):
        return Finding(
            identifiers.NAME,
            identifiers.VERSION,
            "review",
            "a line of the log holds a value like a Swedish personal identity number",
        )
    if len(line) >= rules.encoded_min_chars:
        decoded, opaque = find_encoded(line, rules)
        texts = [d.text for d in decoded if d.text]
        if texts and index.scan(texts).rows:
            return Finding(
                source.NAME, source.VERSION, "block", "a line of the log decodes to source rows"
            )
        findings = check_encodings(decoded, opaque, "in a line of the log")
        if findings:
            return findings[0]
    return None


def _strictest(findings: list[Finding], where: str) -> Finding | None:
    if not findings:
        return None
    verdict = worst(findings)
    first = next(f for f in findings if f.verdict == verdict)
    return Finding(first.check, first.version, verdict, f"{first.evidence} in {where} of the log")


def redact_log(
    text: str, index: SourceIndex, rules: Rules, canaries: Canaries | None = None
) -> tuple[str, list[Finding]]:
    """The log as the researcher may see it, and the findings on the whole log. A line is
    withheld when `check_line` finds something, or when it holds values of a row the log as a
    whole matches (a row printed over several lines)."""
    lines = text.splitlines()
    whole, touched = index.scan_lines(lines)
    findings = check_source(whole, rules, "in the log")
    findings += check_identifier_values("\n".join([text, *readings(text)]), rules, "in the log")
    withheld: dict[str, int] = {}
    out = []
    for line, in_matched_row in zip(lines, touched, strict=True):
        found = check_line(line, index, rules, canaries)
        check = found.check if found else (source.NAME if in_matched_row else None)
        if check is None:
            out.append(line)
            continue
        withheld[check] = withheld.get(check, 0) + 1
        out.append(marker(check))
        if found and found.check == encodings.NAME and found not in findings:
            findings.append(found)
    if withheld:
        detail = ", ".join(f"{check} {n}" for check, n in sorted(withheld.items()))
        findings.append(
            Finding(
                NAME,
                VERSION,
                "review",
                f"{count_words(sum(withheld.values()), 'line')} withheld from the live log "
                f"({detail})",
            )
        )
    redacted = "\n".join(out) + ("\n" if text.endswith("\n") else "")
    return redacted, findings
