"""The tables each project has had released: the airlock's own record, for differencing.

Every `kind: counts` or `kind: table` output that leaves (automatically or by officers) is kept
here by project, sha256 and content; a new table is compared with all of its project's
(secd_airlock.checks.differencing). The record never leaves the airlock and holds only what was
released anyway.

Two adapters, one contract (tests/airlock/test_released.py): `FolderReleasedTables` (files under
`[airlock] released_dir`: one folder per project, named by the project's sha256, one JSON file
per table, named by the table's) and `MemoryReleasedTables` (tests, the bench).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Protocol

from secd_airlock.checks.base import KINDS
from secd_airlock.checks.differencing import ReleasedTable

__all__ = ["FolderReleasedTables", "MemoryReleasedTables", "ReleasedTables"]


class ReleasedTables(Protocol):
    """Where a project's released tables are kept. `add` is safe to call twice."""

    async def add(self, project: str, table: ReleasedTable) -> None:
        """Keep one released table of `project` (again: no change)."""
        ...

    async def tables(self, project: str) -> list[ReleasedTable]:
        """Every table `project` had released, oldest first."""
        ...


class MemoryReleasedTables:
    """Released tables in memory (tests, the bench)."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, ReleasedTable]] = {}

    async def add(self, project: str, table: ReleasedTable) -> None:
        """Keep one released table of `project` (again: no change)."""
        self._tables.setdefault(project, {}).setdefault(table.sha256, table)

    async def tables(self, project: str) -> list[ReleasedTable]:
        """Every table `project` had released, oldest first."""
        return list(self._tables.get(project, {}).values())


def _check_sha(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("a released table's sha256 must be 64 lower-case hex digits")
    return sha256


class FolderReleasedTables:
    """Released tables as files: `<root>/<sha256 of project>/<sha256>.json`, written atomically
    (a temporary file renamed), readable only by the airlock's user."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, project: str) -> Path:
        return self.root / hashlib.sha256(project.encode()).hexdigest()

    async def add(self, project: str, table: ReleasedTable) -> None:
        """Keep one released table of `project` (again: no change)."""
        await asyncio.to_thread(self._add, project, table)

    def _add(self, project: str, table: ReleasedTable) -> None:
        if hashlib.sha256(table.data).hexdigest() != _check_sha(table.sha256):
            raise ValueError("a released table's content does not match its sha256")
        folder = self._folder(project)
        path = folder / f"{table.sha256}.json"
        if path.exists():
            return
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {
            "project": project,
            "name": table.name,
            "sha256": table.sha256,
            "run_id": table.run_id,
            "kind": table.kind,
            "data": base64.b64encode(table.data).decode(),
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(record, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def tables(self, project: str) -> list[ReleasedTable]:
        """Every table `project` had released, oldest first."""
        return await asyncio.to_thread(self._tables, project)

    def _tables(self, project: str) -> list[ReleasedTable]:
        folder = self._folder(project)
        if not folder.is_dir():
            return []
        paths = sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        found = []
        for path in paths:
            record = json.loads(path.read_text())
            kind = record["kind"]
            if kind not in KINDS:
                raise ValueError(f"{path}: unknown kind of a released table")
            found.append(
                ReleasedTable(
                    name=str(record["name"]),
                    sha256=_check_sha(str(record["sha256"])),
                    run_id=str(record["run_id"]),
                    kind=kind,
                    data=base64.b64decode(record["data"]),
                )
            )
        return found
