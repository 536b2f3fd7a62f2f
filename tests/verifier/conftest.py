"""Fixtures for the verifier's tests: real gpg keys (made once per module) and real git repos."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from secd_verifier.keyring import Keyring
from tests.gpghelp import GpgKey, add_signing_subkey, git_env, make_key, stop_agent

# Commits made without a key: no signing, and no ~/.gitconfig that could sign them anyway.
PLAIN_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Nobody",
    "GIT_AUTHOR_EMAIL": "nobody@example.org",
    "GIT_COMMITTER_NAME": "Nobody",
    "GIT_COMMITTER_EMAIL": "nobody@example.org",
}


class Repo:
    """A throwaway git repository that makes (signed or unsigned) commits on request."""

    def __init__(self, path: Path):
        """Create an empty repository at path, on branch main."""
        self.path = path
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self._n = 0

    def git(self, *args: str, key: GpgKey | None = None, stdin: bytes | None = None) -> str:
        """Run git in the repository (as the key's owner if a key is given) and return stdout."""
        done = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env=git_env(key) if key else PLAIN_ENV,
            input=stdin,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout.decode().strip()

    def commit(self, message: str = "", *, key: GpgKey | None = None) -> str:
        """Commit a change to a new file, signed when a key is given; returns the commit id."""
        self._n += 1
        (self.path / f"file{self._n}.txt").write_text(f"change {self._n}\n")
        self.git("add", "-A")
        sign = ["-S"] if key else ["--no-gpg-sign"]
        self.git("commit", "-q", *sign, "-m", message or f"change {self._n}", key=key)
        return self.head()

    def head(self) -> str:
        """The id of HEAD."""
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """An empty repository of the test's own."""
    return Repo(tmp_path / "repo")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GpgKey]]:
    """alice, bob and mallory's keys, plus alice's second key that signs with a subkey."""
    base = tmp_path_factory.mktemp("keys")
    made = {
        "alice": make_key(base, "Alice", "alice@example.org"),
        "bob": make_key(base, "Bob", "bob@example.org"),
        "mallory": make_key(base, "Mallory", "mallory@example.org"),
    }
    made["alice-sub"], _ = add_signing_subkey(make_key(base, "Alice", "alice@lab.example.org"))
    yield made
    for key in made.values():
        stop_agent(key)


@pytest.fixture
def keyring(tmp_path: Path, keys: dict[str, GpgKey]) -> Keyring:
    """A keyring where alice has two keys (one with a signing subkey) and bob one; mallory none."""
    root = tmp_path / "keyring"
    for researcher, files in {
        "alice": {"main.asc": keys["alice"], "lab.asc": keys["alice-sub"]},
        "bob": {"bob.asc": keys["bob"]},
    }.items():
        (root / researcher).mkdir(parents=True)
        for name, key in files.items():
            (root / researcher / name).write_text(key.public_armor)
    return Keyring(root)
