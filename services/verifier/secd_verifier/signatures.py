"""Whether a commit is signed by one of the pusher's registered OpenPGP keys.

The mathematics come from pgpy; the rules (revocation, expiry at signing time, subkey bindings
and flags, key creation) are secd's own, in strict.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# pgpy 0.6 imports imghdr, deprecated since Python 3.11 (and gone in 3.13).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pgpy
    from pgpy.constants import SignatureType

from .commits import read_commit
from .keyring import subkey_for
from .strict import verify_strictly

__all__ = ["KeySource", "Verdict", "verify_commit", "verify_push"]

_PGP = "-----BEGIN PGP SIGNATURE-----"
_OTHER_FORMATS = {
    "-----BEGIN SSH SIGNATURE-----": "an SSH key",
    "-----BEGIN SIGNED MESSAGE-----": "an X.509 certificate",
}
# git signs the commit bytes as a detached binary signature; a text-mode one signs them too.
_DOCUMENT_TYPES = {SignatureType.BinaryDocument, SignatureType.CanonicalDocument}


class KeySource(Protocol):
    """Where a researcher's public keys come from: the keyring folder, or the forge's user keys."""

    def keys_of(self, researcher: str) -> list[pgpy.PGPKey]:
        """The researcher's registered public keys."""
        ...

    def owner_of(self, key_id: str) -> str | None:
        """Who else holds a key, to say so in the reason; None if unknown."""
        ...


@dataclass(frozen=True)
class Verdict:
    """The outcome for one commit: ok with the signing key's fingerprint, or a one-line reason.

    `rule` names the rule a rejected signature broke (see strict.py), when it got that far.
    """

    commit: str
    ok: bool
    reason: str = ""
    fingerprint: str | None = None
    rule: str | None = None


def _reject(sha: str, reason: str, rule: str | None = None) -> Verdict:
    return Verdict(commit=sha, ok=False, reason=reason, rule=rule)


def verify_commit(repo: Path, sha: str, researcher: str, keyring: KeySource) -> Verdict:
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

    match = next(
        ((key, found) for key in keys if (found := subkey_for(key, key_id)) is not None), None
    )
    if match is None:
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

    primary, signing_key = match
    mismatch = f"commit {short}: the signature does not match the commit's content"
    if sig_type not in _DOCUMENT_TYPES:
        return _reject(sha, mismatch, "mismatch")
    violation = verify_strictly(primary, signing_key, signature, payload)
    if violation is not None:
        if violation.rule == "mismatch":
            return _reject(sha, mismatch, "mismatch")
        return _reject(sha, f"commit {short} {violation.reason}", violation.rule)
    fingerprint = str(signing_key.fingerprint).replace(" ", "").upper()
    return Verdict(commit=sha, ok=True, fingerprint=fingerprint)


def verify_push(
    repo: Path,
    commits: list[str],
    researcher: str,
    keyring: KeySource,
    *,
    forge_check: Callable[[str], str | None] | None = None,
) -> list[Verdict]:
    """Verdicts for the push's commits in order, stopping after (and ending with) the first failure.

    `forge_check(sha)`, when given, runs after a commit passed secd's own check and returns a
    reason to reject it (the forge's own verification, e.g. GitLab's) or None.
    """
    verdicts = []
    for sha in commits:
        verdict = verify_commit(repo, sha, researcher, keyring)
        if verdict.ok and forge_check is not None:
            reason = forge_check(sha)
            if reason is not None:
                verdict = _reject(sha, reason, "forge-not-verified")
        verdicts.append(verdict)
        if not verdict.ok:
            break
    return verdicts
