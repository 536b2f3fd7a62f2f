"""Results branches written with git plumbing into a real bare repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from secd_publisher.branch import PublishError, list_files, publish_branch

GIT_ENV = {
    "PATH": os.environ["PATH"],
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Researcher",
    "GIT_AUTHOR_EMAIL": "r@example.org",
    "GIT_COMMITTER_NAME": "Researcher",
    "GIT_COMMITTER_EMAIL": "r@example.org",
}
HOOKS = ("post-receive", "pre-receive", "update", "post-update", "reference-transaction")


def git(cwd: Path, *args: str, text: bool = True):
    out = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, check=True)
    return out.stdout.decode().strip() if text else out.stdout


@pytest.fixture
def pushed(tmp_path) -> tuple[Path, str]:
    """A bare repository with one pushed commit on main, and hooks that would leave markers."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "main.py").write_text("print('hi')\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "research")
    repo = tmp_path / "repo.git"
    git(tmp_path, "init", "-q", "--bare", str(repo))
    git(work, "push", "-q", str(repo), "main")
    for hook in HOOKS:
        path = repo / "hooks" / hook
        path.write_text(f"#!/bin/sh\ncat > /dev/null\ntouch '{tmp_path}/fired-{hook}'\n")
        path.chmod(0o755)
    return repo, git(repo, "rev-parse", "refs/heads/main")


def fired(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("fired-*"))


def test_publish_creates_branch_with_files(tmp_path, pushed):
    repo, head = pushed
    model = tmp_path / "model.json"
    model.write_text('{"weights": [1, 2, 3]}\n')
    big = tmp_path / "big.bin"
    big_data = os.urandom(5 * 1024 * 1024)
    big.write_bytes(big_data)
    binary = bytes(range(256)) + b"\0\r\n\xff"
    files = {
        "output/model.json": model,
        "output/big.bin": big,
        "output/sub/dir/raw.bin": binary,
        "secd-run.log": b"line one\nline two\n",
        "secd-manifest.json": b"{}",
    }
    commit = publish_branch(repo, "secd/run-r1/ok", head, files, "secd: results of run r1\n\nok")

    assert git(repo, "rev-parse", "refs/heads/secd/run-r1/ok") == commit
    assert git(repo, "rev-parse", f"{commit}^") == head
    assert git(repo, "rev-list", "--count", commit) == "2"
    # The results only: the pushed source is the parent's, not copied onto the branch.
    assert sorted(list_files(repo, commit)) == sorted(files)
    assert git(repo, "show", f"{commit}:output/model.json") == '{"weights": [1, 2, 3]}'
    assert git(repo, "show", f"{commit}:output/big.bin", text=False) == big_data
    assert git(repo, "show", f"{commit}:output/sub/dir/raw.bin", text=False) == binary
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%B", commit) == (
        "secd <secd@localhost>|secd <secd@localhost>|secd: results of run r1\n\nok"
    )
    assert "main.py" not in list_files(repo, commit)
    assert fired(tmp_path) == []
    git(repo, "fsck", "--strict")


def test_second_call_returns_the_same_commit(tmp_path, pushed):
    repo, head = pushed
    first = publish_branch(repo, "secd/r2", head, {"secd-run.log": b"one"}, "first")
    again = publish_branch(repo, "secd/r2", head, {"secd-run.log": b"different"}, "retry")
    assert again == first
    assert git(repo, "show", f"{first}:secd-run.log") == "one"
    assert fired(tmp_path) == []


def test_author_and_orphan_branch(tmp_path, pushed):
    repo, _ = pushed
    commit = publish_branch(
        repo, "results", None, {"a.txt": b"a"}, "orphan", author=("Bot", "bot@site.example")
    )
    assert git(repo, "log", "-1", "--format=%an <%ae>|%P", commit) == "Bot <bot@site.example>|"
    assert list_files(repo, commit) == ["a.txt"]


def test_no_files_commit_an_empty_tree(pushed):
    repo, head = pushed
    commit = publish_branch(repo, "empty", head, {}, "nothing")
    assert list_files(repo, commit) == []
    assert list_files(repo, head) == ["main.py"]
    orphan = publish_branch(repo, "orphan", None, {}, "nothing")
    assert list_files(repo, orphan) == []


def test_results_may_reuse_a_pushed_file_name_as_a_folder(pushed):
    repo, head = pushed
    # The pushed tree has main.py as a file; the results tree is its own, so no clash.
    commit = publish_branch(repo, "clash", head, {"main.py/out.txt": b"r"}, "m")
    assert list_files(repo, commit) == ["main.py/out.txt"]


@pytest.mark.parametrize(
    "path",
    [
        "/abs",
        "../up",
        "a/../b",
        "a//b",
        "./a",
        "a/",
        "",
        ".git/config",
        "x/.git/hooks/post-receive",
        ".GIT/config",
        ".git./config",
        "a\nb",
        "a\\b",
        "nul\0byte",
    ],
)
def test_bad_paths_refused(tmp_path, pushed, path):
    repo, head = pushed
    with pytest.raises(PublishError):
        publish_branch(repo, "secd/bad", head, {path: b"x"}, "bad")
    assert git(repo, "for-each-ref", "--format=%(refname)") == "refs/heads/main"


def test_file_and_directory_clash_refused(pushed):
    repo, head = pushed
    with pytest.raises(PublishError, match="both a file and a directory"):
        publish_branch(repo, "secd/clash", head, {"out": b"1", "out/x": b"2"}, "m")


@pytest.mark.parametrize("branch", ["", "-x", "a..b", "a b", "a~1", "a:b", "@{-1}", "x.lock", "/a"])
def test_bad_branch_names_refused(pushed, branch):
    repo, head = pushed
    with pytest.raises(PublishError, match="not a valid branch name"):
        publish_branch(repo, branch, head, {"a": b"a"}, "m")


def test_symlinks_and_non_files_refused(tmp_path, pushed):
    repo, head = pushed
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    link = tmp_path / "link"
    link.symlink_to(secret)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for source, says in ((link, "cannot read"), (fifo, "not a regular file"), (tmp_path, "not a")):
        with pytest.raises(PublishError, match=says):
            publish_branch(repo, "secd/x", head, {"out.txt": source}, "m")
    with pytest.raises(PublishError, match="cannot read"):
        publish_branch(repo, "secd/x", head, {"out.txt": tmp_path / "missing"}, "m")
    assert git(repo, "for-each-ref", "--format=%(refname)") == "refs/heads/main"


def test_unknown_parent_refused(pushed):
    repo, _ = pushed
    with pytest.raises(PublishError, match="not in"):
        publish_branch(repo, "secd/p", "f" * 40, {"a": b"a"}, "m")
    with pytest.raises(PublishError, match="not a commit name"):
        publish_branch(repo, "secd/p", "--all", {"a": b"a"}, "m")


def test_inherited_git_environment_is_ignored(tmp_path, pushed, monkeypatch):
    repo, head = pushed
    stray_index = tmp_path / "stray-index"
    monkeypatch.setenv("GIT_INDEX_FILE", str(stray_index))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    commit = publish_branch(repo, "secd/env", head, {"a": b"a"}, "m")
    assert list_files(repo, commit) == ["a"]
    assert not stray_index.exists()
