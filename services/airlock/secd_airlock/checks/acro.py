"""ACRO's `results.json`: what a job that wrote its tables through ACRO says about them.

It is a claim made by the job's own code, so it never lets a table pass: the tables ACRO wrote
go through the airlock's own SDC checks like any other (as frequency tables when ACRO's command
counted), a table ACRO itself marked `fail` or `review` stays held even where the airlock's
checks find nothing (ACRO saw the microdata), and where ACRO says `pass` but the airlock
disagrees the evidence says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from .base import Finding

NAME = "sdc-acro"
VERSION = 1

# ACRO commands whose tables hold counts unless an aggregation function is named.
_COUNTING = ("crosstab", "pivot_table", "hist", "surv_func")
_COUNT_FUNCTIONS = ("aggfunc=none", "aggfunc='count'", 'aggfunc="count"', "aggfunc='size'")


@dataclass(frozen=True)
class AcroClaim:
    """ACRO's word on one file it wrote: the output's uid, its status and its command."""

    uid: str
    status: str
    command: str
    file: str  # the file's name as ACRO wrote it (a base name)

    @property
    def counts(self) -> bool:
        """Whether the table holds counts (a crosstab without aggfunc, or aggfunc count)."""
        command = self.command.lower().replace(" ", "")
        if not any(word in command for word in _COUNTING):
            return False
        return "aggfunc" not in command or any(f in command for f in _COUNT_FUNCTIONS)


def acro_claims(data: bytes) -> list[AcroClaim] | None:
    """The claims in an ACRO `results.json`, None when the bytes are not one."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("results"), dict):
        return None
    if "version" not in document:
        return None
    claims = []
    for uid, record in document["results"].items():
        if not isinstance(record, dict):
            continue
        for item in record.get("files") or []:
            name = item.get("name") if isinstance(item, dict) else item
            if isinstance(name, str) and name:
                claims.append(
                    AcroClaim(
                        uid=str(uid)[:64],
                        status=str(record.get("status", "")).lower()[:16],
                        command=str(record.get("command", ""))[:500],
                        file=PurePosixPath(name).name,
                    )
                )
    return claims


def check_claim(claim: AcroClaim, findings: list[Finding]) -> list[Finding]:
    """What ACRO's claim adds to the airlock's own `findings` on the file it names."""
    uid = claim.uid if claim.uid.replace("_", "").isalnum() else "an output"
    held = sorted({f.check for f in findings if f.verdict != "pass"})
    if claim.status in ("fail", "review"):
        return [
            Finding(
                NAME,
                VERSION,
                "review",
                f"ACRO's results.json marks {uid} {claim.status}: ACRO saw the microdata, so "
                "its own finding stands",
            )
        ]
    if claim.status == "pass" and held:
        return [
            Finding(
                NAME,
                VERSION,
                "review",
                f"ACRO's results.json says {uid} passes; the airlock's own checks disagree "
                f"({', '.join(held)})",
            )
        ]
    return []
