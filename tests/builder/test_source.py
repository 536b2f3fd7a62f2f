"""Source export and single-file reads from a real bare repository."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from secd_builder.source import SourceError, read_file_at, write_archive
from secd_shared.tarballs import extract


def export_source(repo: Path, commit: str, dest: Path) -> Path:
    """What builder and executor do together: the commit archived, then unpacked afresh."""
    archive = io.BytesIO()
    write_archive(repo, commit, archive)
    archive.seek(0)
    shutil.rmtree(dest, ignore_errors=True)
    extract(archive, dest, links="inside")
    return dest


GIT_ENV = {
    "PATH": os.environ["PATH"],
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Researcher",
    "GIT_AUTHOR_EMAIL": "r@example.org",
    "GIT_COMMITTER_NAME": "Researcher",
    "GIT_COMMITTER_EMAIL": "r@example.org",
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def commit_all(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    return git(work, "rev-parse", "HEAD")


@pytest.fixture
def work(tmp_path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    return work


def bare(tmp_path: Path, work: Path) -> Path:
    repo = tmp_path / "repo.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(repo))
    return repo


def test_export_and_read(tmp_path, work):
    (work / "main.py").write_text("print('hi')\n")
    (work / "secd.yml").write_text("runfor: 1\n")
    (work / "pkg").mkdir()
    (work / "pkg" / "mod.py").write_text("X = 1\n")
    (work / "run.sh").write_text("#!/bin/sh\necho run\n")
    (work / "run.sh").chmod(0o755)
    (work / "data.bin").write_bytes(bytes(range(256)) * 10)
    first = commit_all(work, "first")
    (work / "main.py").write_text("print('second')\n")
    (work / "requirements.txt").write_text("six\n")
    second = commit_all(work, "second")
    repo = bare(tmp_path, work)

    dest = export_source(repo, first, tmp_path / "src")
    assert dest == tmp_path / "src"
    assert (dest / "main.py").read_text() == "print('hi')\n"
    assert (dest / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert (dest / "data.bin").read_bytes() == bytes(range(256)) * 10
    assert os.access(dest / "run.sh", os.X_OK)
    assert not (dest / "requirements.txt").exists()

    # A retry replaces the earlier attempt, leaving nothing from it behind.
    (dest / "stray.txt").write_text("from the first attempt")
    again = export_source(repo, second, tmp_path / "src")
    assert (again / "main.py").read_text() == "print('second')\n"
    assert (again / "requirements.txt").read_text() == "six\n"
    assert not (again / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo.git", "src", "work"]

    assert read_file_at(repo, first, "secd.yml") == b"runfor: 1\n"
    assert read_file_at(repo, first, "requirements.txt") is None
    assert read_file_at(repo, second, "requirements.txt") == b"six\n"
    assert read_file_at(repo, second, "pkg/mod.py") == b"X = 1\n"
    assert read_file_at(repo, "main", "main.py") == b"print('second')\n"
    assert read_file_at(repo, second, "nope/secd.yml") is None


def test_symlinks_pointing_outside_are_not_followed(tmp_path, work):
    outside = tmp_path / "outside"
    outside.mkdir()
    (work / "main.py").write_text("print('hi')\n")
    os.symlink("/etc/passwd", work / "passwd")
    os.symlink("../../outside", work / "escape")
    os.symlink("main.py", work / "alias.py")
    commit = commit_all(work, "links")
    repo = bare(tmp_path, work)

    dest = export_source(repo, commit, tmp_path / "out" / "src")
    assert (dest / "main.py").read_text() == "print('hi')\n"
    assert not (dest / "passwd").exists() and not (dest / "passwd").is_symlink()
    assert not (dest / "escape").exists() and not (dest / "escape").is_symlink()
    assert (dest / "alias.py").is_symlink()
    assert (dest / "alias.py").read_text() == "print('hi')\n"
    assert list(outside.iterdir()) == []


def test_read_file_at_refuses_symlink_and_directory(tmp_path, work):
    (work / "real.yml").write_text("gpu: 1\n")
    os.symlink("real.yml", work / "secd.yml")
    (work / "requirements.txt").mkdir()
    (work / "requirements.txt" / "x").write_text("")
    commit = commit_all(work, "odd")
    repo = bare(tmp_path, work)
    with pytest.raises(SourceError, match="symbolic link"):
        read_file_at(repo, commit, "secd.yml")
    with pytest.raises(SourceError, match="tree, not a file"):
        read_file_at(repo, commit, "requirements.txt")


def test_read_file_at_size_limit(tmp_path, work):
    (work / "secd.yml").write_text("# " + "x" * 100 + "\n")
    commit = commit_all(work, "big")
    repo = bare(tmp_path, work)
    with pytest.raises(SourceError, match="is 103 B, more than the 50 B secd reads"):
        read_file_at(repo, commit, "secd.yml", max_bytes=50)


def test_empty_tree_exports_an_empty_source(tmp_path, work):
    git(work, "commit", "-q", "--allow-empty", "-m", "nothing yet")
    head = git(work, "rev-parse", "HEAD")
    repo = bare(tmp_path, work)
    dest = export_source(repo, head, tmp_path / "src")
    assert dest.is_dir() and list(dest.iterdir()) == []
    # A second export (a redelivery) replaces the first, still empty.
    assert list(export_source(repo, head, dest).iterdir()) == []


def test_bad_commits_and_paths(tmp_path, work):
    (work / "main.py").write_text("")
    commit = commit_all(work, "one")
    repo = bare(tmp_path, work)
    for name in ("0" * 40, "nope", "--output=/tmp/x", ""):
        with pytest.raises(SourceError):
            export_source(repo, name, tmp_path / "src")
        with pytest.raises(SourceError):
            read_file_at(repo, name, "main.py")
    assert not (tmp_path / "src").exists()
    assert not (tmp_path / "src.tmp").exists()
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
    with pytest.raises(SourceError, match="not in"):
        export_source(repo, tree, tmp_path / "src")
    for path in ("/etc/passwd", "../x", "a//b", "", "./main.py"):
        with pytest.raises(SourceError, match="relative path"):
            read_file_at(repo, commit, path)
