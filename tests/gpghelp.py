"""Real GPG keys and signing git commits for tests, without touching the user's keyring or config.

    key = make_key(tmp_path, "Alice", "alice@example.org")
    subprocess.run(["git", "commit", "-S", "-m", "msg"], cwd=repo, env=git_env(key), check=True)
    (keyring_dir / "alice" / "key.asc").write_text(key.public_armor)
    stop_agent(key)  # at teardown: gpg started an agent for the home

Each key lives in its own GNUPGHOME, has no passphrase and is ed25519 (generation takes
milliseconds). `git_env` configures git through GIT_CONFIG_* variables, so any `git` run with that
environment signs with the key, in any repository, and ignores ~/.gitconfig.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "GpgKey",
    "add_signing_subkey",
    "add_subkey",
    "at_time",
    "change_usage",
    "clone_home",
    "git_env",
    "make_key",
    "revoke_key",
    "revoke_subkey",
    "set_expiry",
    "stop_agent",
]

# Without /run/user, gpg-agent puts its sockets in GNUPGHOME, and a socket path is limited to
# 107 bytes: leave room for "/gnupg-XXXXXXXX/S.gpg-agent.browser".
_MAX_BASE = 64


@dataclass(frozen=True)
class GpgKey:
    """A test signing key: its GNUPGHOME, fingerprint, armored public key, and the env to use it."""

    home: Path
    fingerprint: str
    public_armor: str
    name: str
    email: str
    signing_key: str  # what git passes to gpg -u: the primary, or "<subkey fpr>!" to force a subkey
    gpg_program: str = "gpg"  # what git runs to sign (at_time() puts a faked clock in front)

    @property
    def env(self) -> dict[str, str]:
        """The environment for `gpg` commands on this key's home."""
        return {**os.environ, "GNUPGHOME": str(self.home)}


def _gpg(key_home: Path, *args: str) -> str:
    done = subprocess.run(
        ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args],
        env={**os.environ, "GNUPGHOME": str(key_home)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gpg {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _fingerprints(home: Path, of: str) -> list[str]:
    out = _gpg(home, "--with-colons", "--list-keys", of)
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]


def make_key(
    tmp_path: Path, name: str, email: str, *, expire: str = "never", faked_time: str | None = None
) -> GpgKey:
    """Generate an ed25519 signing key for "name <email>" in a fresh GNUPGHOME under tmp_path.

    `expire` is gpg's (e.g. "1d"); `faked_time` (e.g. "20200101T000000") makes the key then, so
    a test can have a key that has already expired.
    """
    base = Path(tmp_path)
    if len(str(base)) > _MAX_BASE:
        base = Path(tempfile.mkdtemp(prefix="secd-gnupg-"))  # stop_agent removes it
    home = Path(tempfile.mkdtemp(prefix="gnupg-", dir=base))
    home.chmod(0o700)
    when = ["--faked-system-time", f"{faked_time}!"] if faked_time else []
    _gpg(home, *when, "--quick-gen-key", f"{name} <{email}>", "ed25519", "sign", expire)
    fingerprint = _fingerprints(home, email)[0]
    armor = _gpg(home, "--armor", "--export", fingerprint)
    return GpgKey(home, fingerprint, armor, name, email, fingerprint)


def add_signing_subkey(key: GpgKey) -> tuple[GpgKey, str]:
    """Add an ed25519 signing subkey; the returned key signs with it and exports it too."""
    _gpg(key.home, "--quick-add-key", key.fingerprint, "ed25519", "sign", "never")
    subkey = _fingerprints(key.home, key.fingerprint)[-1]
    armor = _gpg(key.home, "--armor", "--export", key.fingerprint)
    return replace(key, public_armor=armor, signing_key=f"{subkey}!"), subkey


def git_env(key: GpgKey, **extra: str) -> dict[str, str]:
    """An environment where `git commit -S` signs as the key's owner, ignoring ~/.gitconfig."""
    config = {
        "user.name": key.name,
        "user.email": key.email,
        "user.signingkey": key.signing_key,
        "gpg.program": key.gpg_program,
        "gpg.format": "openpgp",
        "init.defaultBranch": "main",
    }
    env = {
        **os.environ,
        "GNUPGHOME": str(key.home),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_COUNT": str(len(config)),
        **extra,
    }
    for i, (name, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = name
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def stop_agent(key: GpgKey) -> None:
    """Stop the gpg-agent of the key's home (and remove the home if it lives outside tmp_path)."""
    subprocess.run(
        ["gpgconf", "--kill", "gpg-agent"], env=key.env, capture_output=True, check=False
    )
    if key.home.parent.name.startswith("secd-gnupg-"):
        shutil.rmtree(key.home.parent, ignore_errors=True)


def _when(faked_time: str | None) -> list[str]:
    return ["--faked-system-time", f"{faked_time}!", "--ignore-time-conflict"] if faked_time else []


def _export(key: GpgKey) -> GpgKey:
    return replace(key, public_armor=_gpg(key.home, "--armor", "--export", key.fingerprint))


def add_subkey(
    key: GpgKey,
    usage: str = "sign",
    *,
    algo: str = "ed25519",
    expire: str = "never",
    faked_time: str | None = None,
) -> tuple[GpgKey, str]:
    """Add a subkey (gpg's usage: sign, auth, encr; cv25519 for encr); returns the key and its fingerprint.

    A signing subkey is what the returned key signs with; for other usages it keeps signing as before.
    """  # noqa: E501
    _gpg(key.home, *_when(faked_time), "--quick-add-key", key.fingerprint, algo, usage, expire)
    subkey = _fingerprints(key.home, key.fingerprint)[-1]
    updated = _export(key)
    if usage == "sign":
        updated = replace(updated, signing_key=f"{subkey}!")
    return updated, subkey


def set_expiry(
    key: GpgKey, expire: str, *, subkey: str | None = None, faked_time: str | None = None
) -> GpgKey:
    """Change when the key (or one subkey) expires, as of `faked_time` if given ("never", "1d", ...)."""  # noqa: E501
    _gpg(
        key.home, *_when(faked_time), "--quick-set-expire", key.fingerprint, expire,
        *([subkey] if subkey else []),
    )  # fmt: skip
    return _export(key)


def revoke_key(key: GpgKey) -> GpgKey:
    """Revoke the whole key with the revocation certificate gpg made at generation."""
    certificate = (key.home / "openpgp-revocs.d" / f"{key.fingerprint}.rev").read_text()
    # gpg prefixes the armor line with ':' so the file cannot be imported by accident.
    certificate = certificate.replace(
        ":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----"
    )
    subprocess.run(
        ["gpg", "--batch", "--quiet", "--import"], input=certificate.encode(),
        env=key.env, capture_output=True, check=True,
    )  # fmt: skip
    return _export(key)


def _edit(key: GpgKey, commands: list[str], *, expert: bool = False) -> None:
    done = subprocess.run(
        [
            "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
            *(["--expert"] if expert else []), "--command-fd", "0", "--status-fd", "2",
            "--edit-key", key.fingerprint,
        ],
        input="".join(f"{line}\n" for line in commands).encode(),
        env=key.env, capture_output=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"gpg --edit-key failed: {done.stderr.decode()[-500:]}")


def _index(key: GpgKey, subkey: str) -> int:
    return _fingerprints(key.home, key.fingerprint).index(subkey)


def revoke_subkey(key: GpgKey, subkey: str) -> GpgKey:
    """Revoke one subkey (reason 0, no description)."""
    _edit(key, [f"key {_index(key, subkey)}", "revkey", "y", "0", "", "y", "save"])
    return _export(key)


def change_usage(key: GpgKey, toggles: str, *, subkey: str | None = None) -> GpgKey:
    """Toggle usage flags (letters S, E, A) of the primary key or a subkey, as a new self-signature."""  # noqa: E501
    select = [f"key {_index(key, subkey)}"] if subkey else []
    _edit(key, [*select, "change-usage", *toggles, "Q", "save"], expert=True)
    return _export(key)


def at_time(key: GpgKey, faked_time: str) -> GpgKey:
    """The key, signing as if the clock said `faked_time` (e.g. "20200105T000000")."""
    wrapper = key.home / f"gpg-at-{faked_time}"
    wrapper.write_text(f'#!/bin/sh\nexec gpg {" ".join(_when(faked_time))} "$@"\n')
    wrapper.chmod(0o755)
    return replace(key, gpg_program=str(wrapper))


def clone_home(key: GpgKey) -> GpgKey:
    """The same key in a copy of its GNUPGHOME, to change one copy and sign with the other."""
    home = Path(tempfile.mkdtemp(prefix="gnupg-", dir=key.home.parent))
    home.chmod(0o700)
    # The agent's sockets stay behind: the copy starts its own agent.
    shutil.copytree(key.home, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("S.*"))
    return replace(key, home=home, gpg_program="gpg")
