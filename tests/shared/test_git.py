"""The git door (secd_shared.git) against hostile repositories and environments, with real git.

Each hostile setting is first shown to work on plain git (the marker file appears), so a test
cannot pass because the trap was never armed.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from secd_shared.git import EMPTY_TREE, GitError, Remote, Repository, git_environment
from tests.helpers import is_root, requires

PLAIN_ENV = {
    "PATH": os.environ["PATH"],
    "HOME": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Researcher",
    "GIT_AUTHOR_EMAIL": "r@example.org",
    "GIT_COMMITTER_NAME": "Researcher",
    "GIT_COMMITTER_EMAIL": "r@example.org",
}
IDENTITY = ("secd", "secd@example.org")


def plain_git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """git as a person would run it, with none of the door's hardening."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=PLAIN_ENV, capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"git {args} failed: {done.stderr}")
    return done.stdout.strip()


@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, str]:
    """A repository with a work tree and one commit holding main.py; (path, commit)."""
    path = tmp_path / "work"
    plain_git("init", "-q", "-b", "main", str(path))
    (path / "main.py").write_text("print('hi')\n")
    plain_git("add", "main.py", cwd=path)
    plain_git("commit", "-q", "--no-gpg-sign", "-m", "first", cwd=path)
    return path, plain_git("rev-parse", "HEAD", cwd=path)


@pytest.fixture
def bare(tmp_path: Path, work: tuple[Path, str]) -> tuple[Path, str]:
    """A bare clone of `work`; (path, commit)."""
    path = tmp_path / "bare.git"
    plain_git("clone", "-q", "--bare", str(work[0]), str(path))
    return path, work[1]


def marker_script(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """An executable that touches a marker file; (script, marker)."""
    marker = tmp_path / f"{name}-ran"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    return script, marker


def test_hooks_of_the_repository_do_not_run(tmp_path, bare):
    path, head = bare
    script, marker = marker_script(tmp_path, "hook")
    hooks = tmp_path / "elsewhere-hooks"
    hooks.mkdir()
    for folder in (path / "hooks", hooks):
        (folder / "reference-transaction").write_bytes(script.read_bytes())
        (folder / "reference-transaction").chmod(0o755)
    plain_git("--git-dir", str(path), "update-ref", "refs/armed", head)
    assert marker.exists()  # plain git runs the repository's hook
    marker.unlink()
    plain_git("--git-dir", str(path), "config", "core.hooksPath", str(hooks))

    git = Repository(path)
    git.create_ref("refs/heads/secd/r1", head, message="test")
    git.add_note("refs/notes/secd", head, "pending\n", identity=IDENTITY)
    assert git.resolve("refs/heads/secd/r1") == head
    assert not marker.exists()


def test_fsmonitor_of_the_repository_does_not_run(tmp_path, work):
    path, _ = work
    script, marker = marker_script(tmp_path, "fsmonitor")
    plain_git("config", "core.fsmonitor", str(script), cwd=path)
    plain_git("--git-dir", str(path / ".git"), "write-tree", cwd=Path("/"))
    assert marker.exists()  # plain git asks the fsmonitor when it reads the index
    marker.unlink()

    tree = Repository(path).write_tree()
    assert len(tree) == 40
    assert not marker.exists()


def test_ssh_command_of_the_repository_does_not_run(tmp_path, bare):
    path, _ = bare
    script, marker = marker_script(tmp_path, "ssh")
    plain_git("--git-dir", str(path), "config", "core.sshCommand", str(script))
    plain_git("--git-dir", str(path), "fetch", "-q", "ssh://forge.invalid/x.git", check=False)
    assert marker.exists()  # plain git runs the configured ssh command
    marker.unlink()

    git = Repository(path)
    with pytest.raises(GitError, match="transport 'ssh' not allowed"):
        git.run("fetch", "-q", "ssh://forge.invalid/x.git")
    # Nor any other transport, file:// and ext:: included, without a Remote that allows one.
    for url in (f"file://{path}", str(path), "ext::sh -c touch% /tmp/x"):
        with pytest.raises(GitError, match="not allowed"):
            git.run("ls-remote", url)
    assert not marker.exists()


def test_a_remote_allows_its_own_scheme_and_urls_only(bare):
    path, _ = bare
    git = Repository(path, remote=Remote("https://forge.invalid/gitlab", "t0ken-value-1234"))
    with pytest.raises(GitError, match="only the configured forge") as refused:
        git.fetch("https://other.invalid/x.git", ["refs/heads/*:refs/heads/*"], what="fetch")
    with pytest.raises(GitError, match="only the configured forge"):
        git.push("ssh://forge.invalid/gitlab/x.git", "main:main", what="push")
    assert "t0ken" not in str(refused.value)
    env = git_environment(Remote("https://forge.invalid/gitlab", "t0ken-value-1234"))
    settings = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert settings["protocol.allow"] == "never"
    assert settings["protocol.https.allow"] == "always"
    assert "protocol.file.allow" not in settings
    # The token is in the helper's environment only, never in a setting or an argument.
    assert not any("t0ken" in value for value in settings.values())


def test_a_url_with_credentials_is_refused_without_showing_them():
    with pytest.raises(GitError) as refused:
        Remote("https://oauth2:hunter2-secret@forge.invalid", "t0ken-value-1234")
    assert "hunter2" not in str(refused.value)


def test_the_token_never_reaches_an_error(bare):
    path, _ = bare
    token = "t0ken-value-1234"
    git = Repository(path, remote=Remote("https://forge.invalid", token))
    # git echoes a bad object name on stderr: the token, given as one, must come back hidden.
    with pytest.raises(GitError) as failed:
        git.run("cat-file", "-t", token)
    assert token not in str(failed.value)
    assert "[token]" in str(failed.value)
    with pytest.raises(GitError) as failed:
        git.run("cat-file", "-t", "https://user:pa55word@forge.invalid/x")
    assert "pa55word" not in str(failed.value)
    assert "\n" not in str(failed.value)


@pytest.mark.parametrize(
    "config",
    [
        ("filter.evil.smudge", "touch /tmp/secd-filter-ran"),
        ("include.path", "/tmp/elsewhere.config"),
        ("url.https://evil.invalid/.insteadOf", "https://forge.invalid/"),
        ("http.proxy", "http://evil.invalid:3128"),
        ("credential.helper", "store"),
    ],
)
def test_a_repository_whose_config_could_run_or_redirect_git_is_refused(bare, config):
    path, head = bare
    plain_git("--git-dir", str(path), "config", *config)
    with pytest.raises(GitError, match="config secd refuses"):
        Repository(path).resolve(head)


def test_a_filter_driver_would_have_run_in_an_archive(tmp_path, work, bare):
    # Why filter drivers are refused rather than overridden: git archive runs them.
    path, _ = work
    script, marker = marker_script(tmp_path, "filter")
    (path / ".gitattributes").write_text("*.py filter=evil\n")
    plain_git("add", ".gitattributes", cwd=path)
    plain_git("commit", "-q", "--no-gpg-sign", "-m", "attributes", cwd=path)
    plain_git("config", "filter.evil.smudge", str(script), cwd=path)
    subprocess.run(
        ["git", "archive", "--format=tar", "HEAD"],
        cwd=path, env=PLAIN_ENV, capture_output=True, check=True,
    )  # fmt: skip
    assert marker.exists()
    marker.unlink()
    with pytest.raises(GitError, match=r"filter\.evil\.smudge"):
        with Repository(path).archive("HEAD") as stream:
            stream.read()
    assert not marker.exists()


def test_inherited_git_variables_are_ignored(tmp_path, bare, monkeypatch):
    path, head = bare
    stray_index = tmp_path / "stray-index"
    elsewhere = tmp_path / "elsewhere.git"
    plain_git("init", "-q", "--bare", str(elsewhere))
    monkeypatch.setenv("GIT_DIR", str(elsewhere))
    monkeypatch.setenv("GIT_INDEX_FILE", str(stray_index))
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(elsewhere / "objects"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.hooksPath'='/tmp'")

    git = Repository(path)
    assert git.resolve("main", peel="commit") == head
    blob = git.hash_object(b"results\n")
    assert git.cat_file("blob", blob) == b"results\n"
    index = tmp_path / "index"
    git.update_index(f"100644 {blob}\tout.txt".encode() + b"\0", index_file=index)
    tree = git.write_tree(index_file=index)
    commit = git.commit_tree(tree, [head], "results\n", identity=IDENTITY)
    assert plain_git("--git-dir", str(path), "cat-file", "-t", commit) == "commit"
    assert not stray_index.exists()
    assert plain_git("--git-dir", str(elsewhere), "count-objects") == "0 objects, 0 kilobytes"
    assert git.output("config", "core.hooksPath") == os.devnull


@pytest.mark.parametrize(
    "revision", ["--all", "-h", "--output=OUT", "--remote=ext::sh", "--exec=touch"]
)
def test_a_dash_revision_is_a_name_never_an_option(tmp_path, bare, revision):
    path, _ = bare
    revision = revision.replace("OUT", str(tmp_path / "written"))
    git = Repository(path)
    assert git.resolve(revision) is None
    assert git.object_type(revision) is None
    with pytest.raises(GitError):
        git.cat_file("blob", revision)
    with pytest.raises(GitError):
        git.ls_tree(revision)
    with pytest.raises(GitError), git.archive(revision) as stream:
        stream.read()
    assert not (tmp_path / "written").exists()


def test_a_dash_path_is_a_path(tmp_path, work):
    path, _ = work
    (path / "-h").write_text("a file named like an option\n")
    plain_git("add", "--", "-h", cwd=path)
    plain_git("commit", "-q", "--no-gpg-sign", "-m", "dash", cwd=path)
    listing = Repository(path).ls_tree("HEAD", "-h", options=["--name-only"])
    assert listing == b"-h\0"


def test_an_archive_streams_the_tree(tmp_path, bare):
    path, head = bare
    with Repository(path).archive(head) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        names = [member.name for member in tar]
    assert names == ["main.py"]


def test_stdin_is_closed_and_a_hang_times_out(bare):
    path, _ = bare
    git = Repository(path, timeout_s=0.5)
    # Nothing given: stdin is /dev/null, so reading it ends at once (the empty blob).
    assert git.hash_object() == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(GitError, match=r"took longer than 0\.5 s"):
            git.hash_object(fd=read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_an_empty_index_writes_the_empty_tree(tmp_path, bare):
    path, _ = bare
    assert Repository(path).write_tree(index_file=tmp_path / "index") == EMPTY_TREE


def test_a_domain_error_type_is_raised(bare):
    class SourceError(Exception):
        pass

    with pytest.raises(SourceError, match="git cat-file failed in"):
        Repository(bare[0], error=SourceError).cat_file("blob", "0" * 40)


@requires(is_root(), "changing a repository's owner needs root")
def test_a_repository_owned_by_another_user_is_read(bare):
    path, head = bare
    for folder, _, files in os.walk(path):
        os.chown(folder, 65534, 65534)
        for name in files:
            os.chown(Path(folder) / name, 65534, 65534)
    refused = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], env=PLAIN_ENV, capture_output=True
    )
    assert b"dubious ownership" in refused.stderr  # what a discovered repository gets
    assert Repository(path).resolve("HEAD", peel="commit") == head
