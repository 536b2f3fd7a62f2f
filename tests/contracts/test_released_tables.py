"""One contract for every ReleasedTables adapter (secd_airlock.released): in memory and a folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from secd_airlock.checks.differencing import ReleasedTable
from secd_airlock.released import FolderReleasedTables, MemoryReleasedTables


def _table(text: str, run_id: str = "r1", name: str = "counts.csv") -> ReleasedTable:
    data = text.encode()
    return ReleasedTable(name, hashlib.sha256(data).hexdigest(), run_id, "counts", data)


@pytest.fixture(params=["memory", "folder"])
def store(request, tmp_path: Path):
    if request.param == "memory":
        return MemoryReleasedTables()
    return FolderReleasedTables(tmp_path / "released")


async def test_tables_are_kept_per_project_in_order_and_added_once(store):
    assert await store.tables("study") == []
    first, second = _table("diagnosis,n\nAsthma,20\n"), _table("diagnosis,n\nAsthma,25\n", "r2")
    await store.add("study", first)
    await store.add("study", second)
    await store.add("study", first)  # a redelivered run: no second copy
    await store.add("other", _table("x,n\na,10\n", "r3"))
    assert await store.tables("study") == [first, second]
    assert [t.run_id for t in await store.tables("other")] == ["r3"]


async def test_folder_tables_survive_a_restart_and_refuse_a_wrong_digest(tmp_path: Path):
    root = tmp_path / "released"
    table = _table("diagnosis,n\nAsthma,20\n")
    await FolderReleasedTables(root).add("group/study", table)
    assert await FolderReleasedTables(root).tables("group/study") == [table]
    # The project's name never becomes a path: one folder per project, named by its digest.
    assert [p.name for p in root.iterdir()] == [hashlib.sha256(b"group/study").hexdigest()]
    wrong = ReleasedTable("x.csv", "0" * 64, "r1", "counts", b"x,n\na,10\n")
    with pytest.raises(ValueError, match="does not match its sha256"):
        await FolderReleasedTables(root).add("group/study", wrong)
