"""Zero trust: the publisher copies files only from the executor's runs folder."""

from __future__ import annotations

from secd_publisher.service import Publisher
from secd_shared.config import Config


def test_only_paths_in_the_runs_folder_are_published(tmp_path):
    (tmp_path / "runs" / "r1" / "output").mkdir(parents=True)
    publisher = Publisher(Config(state_dir=str(tmp_path)), bus=None)  # type: ignore[arg-type]
    inside = tmp_path / "runs" / "r1" / "output"
    assert publisher._ours(str(inside)) == str(inside)
    for forged in ("/etc", str(tmp_path / "runs" / ".." / "secrets"), str(tmp_path)):
        assert publisher._ours(forged) is None
    assert publisher._ours(None) is None
