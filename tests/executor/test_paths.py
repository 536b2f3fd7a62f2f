"""Zero trust between services: the executor uses paths from an event only where they belong."""

from __future__ import annotations

import pytest

from secd_executor.bwrap import below as _below
from secd_shared.safepath import Beneath, PathRefused, open_beneath
from secd_shared.worker import PermanentError


def test_paths_inside_their_folder_become_root_and_parts(tmp_path):
    (tmp_path / "work" / "r1").mkdir(parents=True)
    below = _below(str(tmp_path / "work" / "r1" / "src"), tmp_path / "work", "source")
    assert below == Beneath(tmp_path / "work", ("r1", "src"))


@pytest.mark.parametrize("path", ["/", "/etc", "work/../elsewhere", "work/r1/../../x", "work"])
def test_a_forged_path_fails_the_run(tmp_path, path):
    (tmp_path / "work").mkdir()
    with pytest.raises(PermanentError, match="source is not where secd keeps them"):
        _below(str(tmp_path / path), tmp_path / "work", "source")


def test_a_symlink_below_the_folder_is_never_followed(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to("/etc")
    below = _below(str(tmp_path / "work" / "link"), tmp_path / "work", "cache_dir")
    with pytest.raises(PathRefused, match="link"):
        open_beneath(below.root, list(below.relative))
