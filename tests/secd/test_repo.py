"""`secd repo create`: a bare repository with the hook that reports pushes to the gateway."""

from __future__ import annotations

import subprocess
import sys

from secd.stack import Stack


def _secd(state, *args):
    return subprocess.run(
        [sys.executable, "-m", "secd", "--state-dir", str(state), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_repo_create_makes_a_bare_repository_with_the_hook(tmp_path):
    state = tmp_path / "state"
    Stack(state).prepare()
    done = _secd(state, "repo", "create", "alice/model")
    assert done.returncode == 0, done.stderr
    path = state.resolve() / "forge" / "alice" / "model.git"
    assert done.stdout.strip() == str(path)
    hook = (path / "hooks" / "post-receive").read_text()
    assert "secd_shared.forge_hook" in hook and "hook-token" in hook
    bare = subprocess.run(
        ["git", "--git-dir", str(path), "rev-parse", "--is-bare-repository"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert bare.stdout.strip() == "true"


def test_repo_create_refuses_a_bad_name_and_a_missing_state(tmp_path):
    state = tmp_path / "state"
    Stack(state).prepare()
    bad = _secd(state, "repo", "create", "../escape")
    assert bad.returncode == 2 and "is not valid" in bad.stderr
    missing = _secd(tmp_path / "nowhere", "repo", "create", "alice/model")
    assert missing.returncode == 1 and "run `secd up` once first" in missing.stderr
