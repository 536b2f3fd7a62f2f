"""Whether a commit is signed by one of the pusher's registered OpenPGP keys."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

# pgpy 0.6 imports imghdr, deprecated since Python 3.11 (and gone in 3.13).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pgpy
    from pgpy.constants import SecurityIssues, SignatureType

from .commits import read_commit
from .keyring import Keyring, subkey_for

__all__ = ["Verdict", "verify_commit", "verify_push"]

_PGP = "-----BEGIN PGP SIGNATURE-----"
_OTHER_FORMATS = {
    "-----BEGIN SSH SIGNATURE-----": "an SSH key",
    "-----BEGIN SIGNED MESSAGE-----": "an X.509 certificate",
}
# git signs the commit bytes as a detached binary signature; a text-mode one signs them too.
_DOCUMENT_TYPES = {SignatureType.BinaryDocument, SignatureType.CanonicalDocument}


@dataclass(frozen=True)
class Verdict:
    """The outcome for one commit: ok with the signing key's fingerprint, or a one-line reason."""

    commit: str
    ok: bool
    reason: str = ""
    fingerprint: str | None = None


def _reject(sha: str, reason: str) -> Verdict:
    return Verdict(commit=sha, ok=False, reason=reason)


def verify_commit(repo: Path, sha: str, researcher: str, keyring: Keyring) -> Verdict:
    """Check that the commit is signed by one of the researcher's keys; never raises for bad signatures."""  # noqa: E501
    short = str(sha)[:7]
    try:
        payload, armored = read_commit(Path(repo), sha)
    except ValueError as exc:
        return _reject(sha, str(exc))
    if armored is None:
        return _reject(
            sha,
            f"commit {short} is not signed; sign it with `git commit -S` "
            "(or set commit.gpgsign=true) and push again",
        )
    text = armored.lstrip()
    for marker, what in _OTHER_FORMATS.items():
        if text.startswith(marker):
            return _reject(
                sha,
                f"commit {short} is signed with {what}; secd accepts only OpenPGP (GPG) "
                "signatures: set gpg.format=openpgp, sign with `git commit -S` and push again",
            )
    if not text.startswith(_PGP):
        return _reject(sha, f"commit {short} carries a signature that is not OpenPGP")

    try:
        keys = keyring.keys_of(researcher)
    except ValueError as exc:
        return _reject(sha, f"commit {short} cannot be checked: {exc}")
    if not keys:
        return _reject(
            sha,
            f"{researcher} has no registered GPG keys; add one to the keyring "
            f"(commit {short} cannot be checked)",
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signature = pgpy.PGPSignature.from_blob(text)
        key_id = signature.signer
        signer_fingerprint = signature.signer_fingerprint
        sig_type = signature.type
    except Exception:  # pgpy raises all sorts on garbled input
        return _reject(sha, f"commit {short}: the signature is damaged (not readable as OpenPGP)")
    key_id = key_id or (signer_fingerprint[-16:] if signer_fingerprint else "")
    if not key_id:
        return _reject(sha, f"commit {short}: the signature does not say which key made it")

    signing_key = next(
        (found for key in keys if (found := subkey_for(key, key_id)) is not None), None
    )
    if signing_key is None:
        owner = keyring.owner_of(key_id)
        if owner is not None and owner != researcher:
            return _reject(
                sha,
                f"commit {short} is signed by key {key_id} of {owner}, "
                f"not by one of {researcher}'s keys",
            )
        return _reject(
            sha,
            f"commit {short} is signed by key {key_id}, which is not registered to {researcher}",
        )

    mismatch = _reject(sha, f"commit {short}: the signature does not match the commit's content")
    if sig_type not in _DOCUMENT_TYPES:
        return mismatch
    try:
        # Revocation and self-signature rules are not enforced yet; pgpy warns about that.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = signing_key.verify(payload, signature)
            issues = [bad.issues for bad in result.bad_signatures]
    except Exception:
        return mismatch
    if issues:
        # pgpy does not check the signature of an expired key at all: say why, not "mismatch".
        if any(SecurityIssues.Expired in found for found in issues):
            return _reject(
                sha,
                f"commit {short} is signed by key {key_id}, which has expired; "
                "extend it (gpg --quick-set-expire) and update the keyring",
            )
        return mismatch
    if not result:
        return mismatch
    fingerprint = str(signing_key.fingerprint).replace(" ", "").upper()
    return Verdict(commit=sha, ok=True, fingerprint=fingerprint)


def verify_push(repo: Path, commits: list[str], researcher: str, keyring: Keyring) -> list[Verdict]:
    """Verdicts for the push's commits in order, stopping after (and ending with) the first failure."""  # noqa: E501
    verdicts = []
    for sha in commits:
        verdict = verify_commit(repo, sha, researcher, keyring)
        verdicts.append(verdict)
        if not verdict.ok:
            break
    return verdicts
