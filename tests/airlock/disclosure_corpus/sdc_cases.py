"""The SDC corpus: tables a study of the synthetic patients could write, each with what the
airlock must say of it. `sdc/cases.json` lists the cases (files under `sdc/`, their `kind:`,
a magnitude table's contributors file, the tables the project released before, the site's rules
where they differ from the defaults); tests/airlock/test_sdc.py and bench/disclosure.py read it.

A `held` case names the checks of which at least one must hold it; a `pass` case must pass every
check of the airlock (source match, identifiers and encodings included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from secd_airlock.checks import OutputFile, Rules
from secd_airlock.checks.differencing import ReleasedTable

HERE = Path(__file__).resolve().parent / "sdc"


@dataclass(frozen=True)
class SdcCase:
    """One run's outputs, what the project released before, and the verdict expected."""

    name: str
    expect: str  # "held" or "pass"
    description: str
    files: list[OutputFile]
    checks: tuple[str, ...] = ()
    released: list[ReleasedTable] = field(default_factory=list)
    rules: Rules = field(default_factory=Rules)


def _file(entry: dict) -> OutputFile:
    contributors = (HERE / entry["contributors"]).read_bytes() if "contributors" in entry else b""
    return OutputFile(
        entry["path"], (HERE / entry["path"]).read_bytes(), entry["kind"], contributors
    )


def sdc_cases() -> list[SdcCase]:
    """Every case of sdc/cases.json."""
    manifest = json.loads((HERE / "cases.json").read_text())
    found = []
    for case in manifest["cases"]:
        released = []
        for i, entry in enumerate(case.get("released_before", [])):
            data = (HERE / entry["path"]).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            released.append(
                ReleasedTable(entry["path"], sha, f"r-earlier-{i}", entry["kind"], data)
            )
        found.append(
            SdcCase(
                name=case["name"],
                expect=case["expect"],
                description=case["description"],
                files=[_file(f) for f in case["files"]],
                checks=tuple(case.get("checks", ())),
                released=released,
                rules=dataclasses.replace(Rules(), **case.get("rules", {})),
            )
        )
    return found
