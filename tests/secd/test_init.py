"""`secd init`: the starter files, never overwriting, and the git signing check with real gpg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from secd.init import FILES
from secd_builder.spec import parse_spec
from tests.gpghelp import git_env, make_key, stop_agent


def secd_init(directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `secd init DIRECTORY` as a researcher would."""
    return subprocess.run(
        [sys.executable, "-m", "secd", "init", str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def bare_git(tmp_path: Path) -> dict[str, str]:
    """An environment with empty git config and an empty gpg home: nothing set up."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    config = tmp_path / "gitconfig"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_CONFIG")}
    return {
        **env,
        "GNUPGHOME": str(home),
        "GIT_CONFIG_GLOBAL": str(config),
        "GIT_CONFIG_NOSYSTEM": "1",
    }


@pytest.fixture
def signing_key(tmp_path: Path):
    """A real ed25519 key in its own gpg home."""
    key = make_key(tmp_path, "Ada Lovelace", "ada@example.org")
    yield key
    stop_agent(key)


def test_writes_the_starter_files(tmp_path: Path, bare_git: dict[str, str]) -> None:
    target = tmp_path / "study"
    done = secd_init(target, bare_git)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    for name, text in FILES.items():
        assert (target / name).read_text() == text
    assert "wrote secd.yml, main.py, requirements.txt, .gitignore" in done.stdout
    # The commented secd.yml is one the builder accepts, with the values it documents.
    spec = parse_spec((target / "secd.yml").read_text())
    assert (spec.runfor, spec.gpu, spec.cache_dir, spec.cache_mount) == (
        1.0,
        0,
        "example",
        "/cache",
    )
    assert spec.command == ["python", "main.py"]
    assert ".secd-cache/" in (target / ".gitignore").read_text().splitlines()


def test_refuses_to_overwrite_and_says_which(tmp_path: Path, bare_git: dict[str, str]) -> None:
    target = tmp_path / "study"
    target.mkdir()
    (target / "main.py").write_text("print('my own work')\n")
    (target / ".gitignore").write_text("data/\n")
    done = secd_init(target, bare_git)
    assert done.returncode == 0
    assert "not overwriting main.py, .gitignore" in done.stdout
    assert "add these lines to your .gitignore: .secd-cache/ output/" in done.stdout
    assert (target / "main.py").read_text() == "print('my own work')\n"
    assert (target / ".gitignore").read_text() == "data/\n"
    assert (target / "secd.yml").exists() and (target / "requirements.txt").exists()

    again = secd_init(target, bare_git)
    assert again.returncode == 1  # nothing left to write
    assert "not overwriting secd.yml, main.py, requirements.txt, .gitignore" in again.stdout


def test_the_example_job_runs_and_caches(tmp_path: Path, bare_git: dict[str, str]) -> None:
    target = tmp_path / "study"
    assert secd_init(target, bare_git).returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in ("SECD", "OUTPUT_PATH")}

    def run() -> float:
        started = os.times().elapsed
        done = subprocess.run(
            [sys.executable, "main.py"], cwd=target, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return os.times().elapsed - started

    run()
    assert (target / "output" / "summary.json").read_text().startswith('{\n  "rows": 100')
    assert len(list((target / ".secd-cache").rglob("*.entry"))) == 1
    assert run() < 1.5  # the two-second step came from the cache


def test_without_signing_set_up_it_prints_the_commands(
    tmp_path: Path, bare_git: dict[str, str]
) -> None:
    done = secd_init(tmp_path / "study", bare_git)
    out = done.stdout
    assert "git signing: 3 things to fix" in out
    assert "git config --global user.name 'Your Name'" in out
    assert "gpg --quick-generate-key 'Your Name <you@example.org>' ed25519 sign 2y" in out
    assert "git config --global user.signingkey <its fingerprint>" in out
    assert "git config --global commit.gpgsign true" in out


def test_a_configured_key_missing_from_gpg_is_reported(
    tmp_path: Path, bare_git: dict[str, str]
) -> None:
    Path(bare_git["GIT_CONFIG_GLOBAL"]).write_text(
        "[user]\n\tname = Ada\n\temail = ada@example.org\n\tsigningkey = 0123456789ABCDEF\n"
        "[commit]\n\tgpgsign = true\n"
    )
    out = secd_init(tmp_path / "study", bare_git).stdout
    assert "git signing: 1 thing to fix" in out
    assert "user.signingkey is 0123456789ABCDEF, but gpg has no secret key for it" in out
    assert "gpg --import <your-secret-key.asc>" in out


def test_a_key_in_gpg_but_not_configured_is_suggested(
    tmp_path: Path, signing_key, bare_git: dict[str, str]
) -> None:
    env = {**bare_git, "GNUPGHOME": str(signing_key.home)}
    Path(env["GIT_CONFIG_GLOBAL"]).write_text(
        "[user]\n\tname = Ada Lovelace\n\temail = ada@example.org\n[commit]\n\tgpgsign = true\n"
    )
    out = secd_init(tmp_path / "study", env).stdout
    assert f"git config --global user.signingkey {signing_key.fingerprint}" in out
    assert "commit.gpgsign" not in out


def test_a_complete_setup_is_ready(tmp_path: Path, signing_key) -> None:
    env = git_env(signing_key, GIT_CONFIG_KEY_6="commit.gpgsign", GIT_CONFIG_VALUE_6="true")
    env["GIT_CONFIG_COUNT"] = "7"
    out = secd_init(tmp_path / "study", env).stdout
    assert f"git signing: ready (key {signing_key.fingerprint})" in out
    assert f"gpg --armor --export {signing_key.fingerprint}" in out

    # The same key with a different git e-mail: the forge would not mark commits verified.
    env["GIT_CONFIG_VALUE_1"] = "someone.else@example.org"
    out = secd_init(tmp_path / "other", env).stdout
    assert "has no user id with your git e-mail someone.else@example.org" in out
    assert f"gpg --quick-add-uid {signing_key.fingerprint}" in out
