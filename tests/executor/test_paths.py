"""Zero trust between services: the executor uses paths from an event only where they belong."""

from __future__ import annotations

import pytest

from secd_executor.service import _inside
from secd_shared.worker import PermanentError


def test_paths_inside_their_folder_are_used_resolved(tmp_path):
    (tmp_path / "work" / "r1").mkdir(parents=True)
    assert _inside(tmp_path / "work" / "r1", tmp_path / "work", "source") == tmp_path / "work/r1"


@pytest.mark.parametrize("path", ["/", "/etc", "work/../elsewhere", "work/r1/../../x"])
def test_a_forged_path_fails_the_run(tmp_path, path):
    (tmp_path / "work").mkdir()
    with pytest.raises(PermanentError, match="source is not where secd keeps them"):
        _inside(tmp_path / path, tmp_path / "work", "source")


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to("/etc")
    with pytest.raises(PermanentError):
        _inside(tmp_path / "work" / "link", tmp_path / "work", "cache_dir")
