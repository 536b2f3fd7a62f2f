"""Zero trust: the publisher reads outputs without following links (events name no host path:
outputs come from the artifact store, tests/contracts/test_artifact_store.py)."""

from __future__ import annotations

from secd_publisher.service import collect_outputs


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
