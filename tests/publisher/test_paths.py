"""Zero trust: the publisher copies files only from the executor's runs folder."""

from __future__ import annotations

from secd_publisher.service import Publisher, collect_outputs
from secd_shared.config import Config


def test_only_paths_in_the_runs_folder_are_published(tmp_path):
    (tmp_path / "runs" / "r1" / "output").mkdir(parents=True)
    publisher = Publisher(Config(state_dir=str(tmp_path)), bus=None)  # type: ignore[arg-type]
    inside = tmp_path / "runs" / "r1" / "output"
    assert publisher._ours(str(inside)) == str(inside)
    for forged in ("/etc", str(tmp_path / "runs" / ".." / "secrets"), str(tmp_path)):
        assert publisher._ours(forged) is None
    assert publisher._ours(None) is None


def test_links_among_the_outputs_are_left_out_and_never_followed(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "shadow").write_text("root:secret\n")
    output = tmp_path / "runs" / "r1" / "output"
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "result.csv").write_text("a,b\n")
    (output / "file-link").symlink_to(host / "shadow")
    (output / "dir-link").symlink_to(host)
    files, excluded = collect_outputs(output)
    assert set(files) == {"output/sub/result.csv"}
    assert {e["path"] for e in excluded} == {"file-link", "dir-link"}


def test_a_folder_swapped_for_a_link_after_listing_is_not_read(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "result.csv").write_text("root:secret\n")
    output = tmp_path / "runs" / "r1" / "output"
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "result.csv").write_text("a,b\n")
    files, _ = collect_outputs(output)
    # The job (had one survived its sandbox) swaps the folder for a link to a host folder.
    (output / "sub").rename(output / "old")
    (output / "sub").symlink_to(host)
    assert files["output/sub/result.csv"].open_file() is None
