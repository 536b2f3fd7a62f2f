"""The strict signature rules, each with a real key made by gpg and a commit signed by git.

Every case here is one that pgpy 0.6 alone accepts (the tests check that too): the rule exists
because the library does not enforce it.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from secd_verifier.commits import read_commit
from secd_verifier.keyring import Keyring
from secd_verifier.signatures import Verdict, verify_commit
from tests.gpghelp import (
    GpgKey,
    add_signing_subkey,
    add_subkey,
    at_time,
    change_usage,
    clone_home,
    make_key,
    revoke_key,
    revoke_subkey,
    set_expiry,
    stop_agent,
)

from .conftest import Repo

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pgpy


@pytest.fixture
def made(tmp_path: Path):
    """Keys made by a test, their gpg agents stopped afterwards."""
    keys: list[GpgKey] = []

    def make(*args, **kwargs) -> GpgKey:
        return track(make_key(tmp_path, *args, **kwargs))

    def track(key: GpgKey) -> GpgKey:
        keys.append(key)
        return key

    make.track = track
    yield make
    for key in keys:
        stop_agent(key)


def check(repo: Repo, sha: str, armor: str, tmp_path: Path) -> Verdict:
    """Verify `sha` for researcher carol, whose only registered key is `armor`."""
    folder = tmp_path / "keyring" / "carol"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.asc").write_text(armor)
    return verify_commit(repo.path, sha, "carol", Keyring(tmp_path / "keyring"))


def pgpy_accepts(repo: Repo, sha: str, armor: str) -> bool:
    """What pgpy's own verify says, the way a verifier without these rules would ask it."""
    payload, signature = read_commit(repo.path, sha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key, _ = pgpy.PGPKey.from_blob(armor)
        return bool(key.verify(payload, pgpy.PGPSignature.from_blob(signature)))


def keyid(fingerprint: str) -> str:
    """The 16-hex key id of a fingerprint."""
    return fingerprint[-16:]


def test_a_revoked_key_is_rejected(repo: Repo, made, tmp_path: Path):
    key = made("Carol", "carol@example.org")
    sha = repo.commit(key=key)
    revoked = revoke_key(key)
    assert pgpy_accepts(repo, sha, revoked.public_armor)
    verdict = check(repo, sha, revoked.public_armor, tmp_path)
    assert verdict.rule == "revoked-key"
    assert verdict.reason == (
        f"commit {sha[:7]} is signed by key {keyid(key.fingerprint)}, which is revoked; "
        "sign with a key that is not revoked"
    )
    assert check(repo, sha, key.public_armor, tmp_path).ok  # the same key before revocation


def test_a_revoked_subkey_is_rejected(repo: Repo, made, tmp_path: Path):
    key, subkey = add_signing_subkey(made("Carol", "carol@example.org"))
    sha = repo.commit(key=key)
    revoked = revoke_subkey(key, subkey)
    assert pgpy_accepts(repo, sha, revoked.public_armor)
    verdict = check(repo, sha, revoked.public_armor, tmp_path)
    assert verdict.rule == "revoked-subkey"
    assert verdict.reason.startswith(
        f"commit {sha[:7]} is signed by subkey {keyid(subkey)} of key {keyid(key.fingerprint)}, "
        "which is revoked"
    )


def future(days: int) -> str:
    """gpg's form of a time `days` from now."""
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y%m%dT%H%M%S")


def test_a_key_expired_when_it_signed_is_rejected(repo: Repo, made, tmp_path: Path):
    key = made("Carol", "carol@example.org")
    signer = made.track(clone_home(key))  # a copy that never learns of the expiry
    registered = set_expiry(key, "1d")
    sha = repo.commit(key=at_time(signer, future(5)))
    assert pgpy_accepts(repo, sha, registered.public_armor)  # pgpy compares with now, not then
    verdict = check(repo, sha, registered.public_armor, tmp_path)
    assert verdict.rule == "expired-when-signed"
    assert verdict.reason.startswith(
        f"commit {sha[:7]} is signed by key {keyid(key.fingerprint)}, which had expired on "
    )
    assert ", before the signature was made (" in verdict.reason
    # Signed today, before it expires, the same key is fine.
    assert check(repo, repo.commit(key=key), registered.public_armor, tmp_path).ok


def test_a_subkey_expired_when_it_signed_is_rejected(repo: Repo, made, tmp_path: Path):
    key, subkey = add_signing_subkey(made("Carol", "carol@example.org"))
    signer = made.track(clone_home(key))
    registered = set_expiry(key, "1d", subkey=subkey)
    sha = repo.commit(key=at_time(signer, future(5)))
    assert pgpy_accepts(repo, sha, registered.public_armor)
    verdict = check(repo, sha, registered.public_armor, tmp_path)
    assert verdict.rule == "expired-when-signed"
    assert verdict.reason.startswith(
        f"commit {sha[:7]} is signed by subkey {keyid(subkey)} of key "
        f"{keyid(key.fingerprint)}, which had expired on "
    )


def test_a_key_that_has_expired_since_is_rejected_too(repo: Repo, made, tmp_path: Path):
    key = made("Carol", "carol@example.org", expire="1d", faked_time="20200101T000000")
    sha = repo.commit(key=at_time(key, "20200101T120000"))
    verdict = check(repo, sha, key.public_armor, tmp_path)
    # The signature's date is the signer's to choose: an expired key signs with any old date.
    assert verdict.rule == "expired"
    assert verdict.reason.startswith(
        f"commit {sha[:7]} is signed by key {keyid(key.fingerprint)}, which has expired"
    )


def test_a_subkey_that_may_not_sign_is_rejected(repo: Repo, made, tmp_path: Path):
    key, subkey = add_signing_subkey(made("Carol", "carol@example.org"))
    sha = repo.commit(key=key)
    # Its owner made it an authentication-only subkey (a newer binding signature).
    auth_only = change_usage(key, "SA", subkey=subkey)
    assert pgpy_accepts(repo, sha, auth_only.public_armor)
    verdict = check(repo, sha, auth_only.public_armor, tmp_path)
    assert verdict.rule == "not-signing-key"
    assert verdict.reason.startswith(
        f"commit {sha[:7]} is signed by subkey {keyid(subkey)} of key "
        f"{keyid(key.fingerprint)}, which is not allowed to sign (its key flags: authenticate)"
    )


def test_a_primary_key_that_may_not_sign_is_rejected(repo: Repo, made, tmp_path: Path):
    key = made("Carol", "carol@example.org")
    sha = repo.commit(key=key)
    key, _ = add_subkey(key, "sign")  # it signs with a subkey from now on
    certify_only = change_usage(key, "S")
    assert pgpy_accepts(repo, sha, certify_only.public_armor)
    verdict = check(repo, sha, certify_only.public_armor, tmp_path)
    assert verdict.rule == "not-signing-key"
    assert verdict.reason.startswith(
        f"commit {sha[:7]} is signed by key {keyid(key.fingerprint)}, which is not allowed to "
        "sign (its key flags: certify)"
    )


def test_an_encryption_subkey_does_not_make_a_key_unusable(repo: Repo, made, tmp_path: Path):
    key, _ = add_subkey(made("Carol", "carol@example.org"), "encr", algo="cv25519")
    sha = repo.commit(key=key)
    assert check(repo, sha, key.public_armor, tmp_path).ok


def test_a_subkey_not_bound_to_the_registered_key_is_rejected(repo: Repo, made, tmp_path: Path):
    carol = made("Carol", "carol@example.org")
    mallory, subkey = add_signing_subkey(made("Mallory", "mallory@example.org"))
    sha = repo.commit(key=mallory)
    # Mallory's subkey (with the binding Mallory's key made) appended to Carol's key.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grafted, _ = pgpy.PGPKey.from_blob(carol.public_armor)
        donor, _ = pgpy.PGPKey.from_blob(mallory.public_armor)
        grafted |= donor.subkeys[keyid(subkey)]
        armor = str(grafted)
    assert pgpy_accepts(repo, sha, armor)
    verdict = check(repo, sha, armor, tmp_path)
    assert verdict.rule == "subkey-not-bound"
    assert verdict.reason.startswith(
        f"commit {sha[:7]} is signed by subkey {keyid(subkey)}, which key "
        f"{keyid(carol.fingerprint)} does not bind with a valid binding signature"
    )


def test_a_signature_older_than_its_key_is_rejected(repo: Repo, made, tmp_path: Path):
    key = made("Carol", "carol@example.org", faked_time="20200101T000000")
    sha = repo.commit(key=at_time(key, "20191201T000000"))
    assert pgpy_accepts(repo, sha, key.public_armor)
    verdict = check(repo, sha, key.public_armor, tmp_path)
    assert verdict.rule == "signed-before-key-created"
    assert verdict.reason == (
        f"commit {sha[:7]} carries a signature dated 2019-12-01 00:00 UTC, before key "
        f"{keyid(key.fingerprint)} was created (2020-01-01 00:00 UTC); "
        "check the clock and sign again"
    )


def test_a_key_of_someone_else_is_rejected_naming_the_owner(repo: Repo, made, tmp_path: Path):
    carol, dave = made("Carol", "carol@example.org"), made("Dave", "dave@example.org")
    sha = repo.commit(key=dave)
    for name, key in (("carol", carol), ("dave", dave)):
        (tmp_path / "keyring" / name).mkdir(parents=True)
        (tmp_path / "keyring" / name / "key.asc").write_text(key.public_armor)
    verdict = verify_commit(repo.path, sha, "carol", Keyring(tmp_path / "keyring"))
    assert verdict.reason == (
        f"commit {sha[:7]} is signed by key {keyid(dave.fingerprint)} of dave, "
        "not by one of carol's keys"
    )
