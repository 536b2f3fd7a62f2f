"""runfor is written in hours and becomes seconds in one place."""

from __future__ import annotations

from pathlib import Path

from secd_executor.runtime import RunRequest
from secd_shared.durations import hours_to_s

ROOT = Path(__file__).resolve().parents[2]


def test_hours_become_seconds() -> None:
    assert hours_to_s(0.05) == 180.0
    assert hours_to_s(3) == 10800


def test_a_run_request_gives_its_runfor_in_seconds(tmp_path: Path) -> None:
    request = RunRequest(
        run_id="r0123456789abcdef0123",
        researcher="alice",
        project="p",
        command=["true"],
        database="sensitive",
        db_kind="postgres",
        db_port=5432,
        db_name="d",
        db_user="u",
        db_password="pw",
        runfor_h=0.5,
        gpu=0,
        cache_dir=None,
        mount_path="/cache",
        output_dir=tmp_path / "out",
        log_path=tmp_path / "log",
    )
    assert request.runfor_s == 1800.0


def test_no_service_converts_hours_itself() -> None:
    """The conversion lives in secd_shared.durations; `* 3600` elsewhere is a second copy."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in ("shared", "services")
        for path in sorted((ROOT / top).rglob("*.py"))
        if path.name != "durations.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "* 3600" in line or "3600 *" in line
    ]
    assert found == []
