"""verify_commit / verify_push and the Keyring, against commits signed by real gpg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from secd_verifier.commits import read_commit
from secd_verifier.keyring import Keyring
from secd_verifier.signatures import Verdict, verify_commit, verify_push
from tests.gpghelp import GpgKey, make_key, stop_agent

from .conftest import Repo


def keyid(key: GpgKey) -> str:
    """The 16-hex key id of a fingerprint."""
    return key.fingerprint[-16:]


def mismatch(sha: str) -> str:
    """The reason given for a signature that does not verify."""
    return f"commit {sha[:7]}: the signature does not match the commit's content"


def forge(repo: Repo, sha: str, edit) -> str:
    """Write a new commit object made by editing the raw bytes of another; returns its id."""
    raw = repo.git("cat-file", "commit", sha).encode() + b"\n"
    return repo.git("hash-object", "-t", "commit", "-w", "--stdin", stdin=edit(raw))


def replace_signature(raw: bytes, armored: str) -> bytes:
    """The raw commit with its gpgsig header (if any) swapped for the given signature text."""
    header, _, message = raw.partition(b"\n\n")
    kept = []
    in_sig = False
    for line in header.split(b"\n"):
        if line.startswith(b"gpgsig "):
            in_sig = True
            continue
        if in_sig and line.startswith(b" "):
            continue
        in_sig = False
        kept.append(line)
    sig = "gpgsig " + armored.rstrip("\n").replace("\n", "\n ")
    return b"\n".join([*kept, sig.encode()]) + b"\n\n" + message


# -- good signatures ---------------------------------------------------------------------------


def test_commits_signed_by_the_pusher_verify(repo: Repo, keys, keyring: Keyring):
    shas = [repo.commit(key=keys["alice"]) for _ in range(3)]
    verdicts = verify_push(repo.path, shas, "alice", keyring)
    assert verdicts == [
        Verdict(commit=sha, ok=True, fingerprint=keys["alice"].fingerprint) for sha in shas
    ]


def test_a_signing_subkey_of_a_registered_key_verifies(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit(key=keys["alice-sub"])
    verdict = verify_commit(repo.path, sha, "alice", keyring)
    subkey = keys["alice-sub"].signing_key.rstrip("!")
    assert verdict.ok, verdict.reason
    assert verdict.fingerprint == subkey != keys["alice-sub"].fingerprint


def test_the_payload_is_what_gpg_signed(repo: Repo, keys, tmp_path: Path):
    sha = repo.commit("a message\n\ngpgsig not a header, just text\n", key=keys["alice"])
    payload, signature = read_commit(repo.path, sha)
    assert signature is not None
    assert signature.startswith("-----BEGIN PGP SIGNATURE-----\n\n")
    assert b"gpgsig" not in payload.partition(b"\n\n")[0]
    (tmp_path / "payload").write_bytes(payload)
    (tmp_path / "sig.asc").write_text(signature)
    done = subprocess.run(
        ["gpg", "--verify", str(tmp_path / "sig.asc"), str(tmp_path / "payload")],
        env=keys["alice"].env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- rejections --------------------------------------------------------------------------------


def test_an_unsigned_commit_is_rejected(repo: Repo, keyring: Keyring):
    sha = repo.commit()
    verdict = verify_commit(repo.path, sha, "alice", keyring)
    assert not verdict.ok
    assert verdict.fingerprint is None
    assert verdict.reason == (
        f"commit {sha[:7]} is not signed; sign it with `git commit -S` "
        "(or set commit.gpgsign=true) and push again"
    )


def test_a_tampered_commit_is_rejected(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit("pay alice 10", key=keys["alice"])
    forged = forge(repo, sha, lambda raw: raw.replace(b"pay alice 10", b"pay alice 1000"))
    assert forged != sha
    assert read_commit(repo.path, forged)[1] == read_commit(repo.path, sha)[1]
    verdict = verify_commit(repo.path, forged, "alice", keyring)
    assert not verdict.ok
    assert verdict.reason == mismatch(forged)


def test_a_signature_moved_to_another_commit_is_rejected(repo: Repo, keys, keyring: Keyring):
    signed = repo.commit(key=keys["alice"])
    _, signature = read_commit(repo.path, signed)
    unsigned = repo.commit()
    forged = forge(repo, unsigned, lambda raw: replace_signature(raw, signature))
    verdict = verify_commit(repo.path, forged, "alice", keyring)
    assert verdict.reason == mismatch(forged)


def test_a_garbled_signature_is_a_verdict_not_an_exception(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit()
    junk = "\n".join(
        [
            "-----BEGIN PGP SIGNATURE-----",
            "",
            "bm90IGEgc2lnbmF0dXJl",
            "=AAAA",
            "-----END PGP SIGNATURE-----",
        ]
    )
    forged = forge(repo, sha, lambda raw: replace_signature(raw, junk))
    verdict = verify_commit(repo.path, forged, "alice", keyring)
    assert not verdict.ok
    assert verdict.reason.startswith(f"commit {forged[:7]}: the signature is damaged")


def test_a_commit_signed_by_another_researcher_is_rejected(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit(key=keys["bob"])
    verdict = verify_commit(repo.path, sha, "alice", keyring)
    assert verdict.reason == (
        f"commit {sha[:7]} is signed by key {keyid(keys['bob'])} of bob, not by one of alice's keys"
    )
    assert verify_commit(repo.path, sha, "bob", keyring).ok


def test_a_commit_signed_by_an_unknown_key_is_rejected(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit(key=keys["mallory"])
    verdict = verify_commit(repo.path, sha, "alice", keyring)
    assert verdict.reason == (
        f"commit {sha[:7]} is signed by key {keyid(keys['mallory'])}, "
        "which is not registered to alice"
    )


def test_a_commit_signed_by_an_expired_key_is_rejected(repo: Repo, tmp_path: Path):
    old = make_key(
        tmp_path, "Carol", "carol@example.org", expire="1d", faked_time="20200101T000000"
    )
    try:
        unsigned = repo.commit()
        payload, _ = read_commit(repo.path, unsigned)
        signature = subprocess.run(
            [
                *("gpg", "--batch", "--faked-system-time", "20200101T120000!", "--armor"),
                *("--local-user", old.fingerprint, "--detach-sign"),
            ],
            input=payload,
            env=old.env,
            capture_output=True,
            check=True,
        ).stdout.decode()
    finally:
        stop_agent(old)
    forged = forge(repo, unsigned, lambda raw: replace_signature(raw, signature))
    keyring = Keyring(tmp_path / "keyring")
    (keyring.root / "carol").mkdir(parents=True)
    (keyring.root / "carol" / "old.asc").write_text(old.public_armor)
    verdict = verify_commit(repo.path, forged, "carol", keyring)
    assert verdict.reason.startswith(
        f"commit {forged[:7]} is signed by key {keyid(old)}, which has expired"
    )


def test_a_pusher_without_keys_is_told_so(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit(key=keys["mallory"])
    verdict = verify_commit(repo.path, sha, "carol", keyring)
    assert not verdict.ok
    assert verdict.reason.startswith("carol has no registered GPG keys; add one to the keyring")


def test_a_bad_pusher_name_is_a_verdict(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit(key=keys["alice"])
    verdict = verify_commit(repo.path, sha, "../alice", keyring)
    assert not verdict.ok
    assert "invalid researcher name '../alice'" in verdict.reason


@pytest.mark.parametrize(
    ("armor", "expected"),
    [
        ("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n", "an SSH key"),
        ("-----BEGIN SIGNED MESSAGE-----\nMIAG\n-----END SIGNED MESSAGE-----\n", "an X.509"),
    ],
)
def test_non_openpgp_signatures_are_rejected(repo: Repo, keyring: Keyring, armor, expected):
    forged = forge(repo, repo.commit(), lambda raw: replace_signature(raw, armor))
    verdict = verify_commit(repo.path, forged, "alice", keyring)
    assert verdict.reason.startswith(f"commit {forged[:7]} is signed with {expected}")
    assert "only OpenPGP" in verdict.reason


def test_two_signature_headers_are_rejected(repo: Repo, keys, keyring: Keyring):
    sha = repo.commit(key=keys["alice"])
    _, signature = read_commit(repo.path, sha)
    extra = ("gpgsig " + signature.rstrip("\n").replace("\n", "\n ")).encode()
    forged = forge(repo, sha, lambda raw: raw.replace(b"\n\n", b"\n" + extra + b"\n\n", 1))
    verdict = verify_commit(repo.path, forged, "alice", keyring)
    assert not verdict.ok
    assert verdict.reason == f"commit {forged[:7]} carries 2 gpgsig headers"


def test_verify_push_stops_at_the_first_failure(repo: Repo, keys, keyring: Keyring):
    good = repo.commit(key=keys["alice"])
    bad = repo.commit()
    later = repo.commit(key=keys["alice"])
    verdicts = verify_push(repo.path, [good, bad, later], "alice", keyring)
    assert [v.commit for v in verdicts] == [good, bad]
    assert verdicts[0].ok and not verdicts[-1].ok


# -- the keyring -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Alice",
        "1alice",
        ".alice",
        "../alice",
        "alice/../bob",
        "a" * 65,
        "alice\n",
        "al ice",
        "/",
    ],
)
def test_invalid_researcher_names_are_rejected(keyring: Keyring, name):
    with pytest.raises(ValueError, match="invalid researcher name"):
        keyring.keys_of(name)


def test_owner_of_finds_keys_subkeys_and_fingerprints(keys, keyring: Keyring):
    subkey = keys["alice-sub"].signing_key.rstrip("!")
    assert keyring.owner_of(subkey) == "alice"
    assert keyring.owner_of(subkey[-16:].lower()) == "alice"
    assert keyring.owner_of(keys["alice-sub"].fingerprint) == "alice"
    assert keyring.owner_of(keyid(keys["alice"])) == "alice"
    assert keyring.owner_of(keys["bob"].fingerprint) == "bob"
    assert keyring.owner_of(keyid(keys["mallory"])) is None
    assert keyring.owner_of(keyid(keys["bob"])[-8:]) is None  # short ids collide too easily
    assert keyring.owner_of("not a key") is None


def test_the_keyring_reloads_when_files_change(keys, keyring: Keyring):
    assert keyring.keys_of("carol") == []
    folder = keyring.root / "carol"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a key, ignored")
    (folder / "broken.asc").write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\ngarbage\n")
    assert keyring.keys_of("carol") == []
    (folder / "carol.asc").write_text(keys["mallory"].public_armor)
    assert [str(k.fingerprint) for k in keyring.keys_of("carol")] == [keys["mallory"].fingerprint]
    assert keyring.owner_of(keys["mallory"].fingerprint) == "carol"
    (folder / "carol.asc").unlink()
    assert keyring.keys_of("carol") == []
    assert len(keyring.keys_of("alice")) == 2
