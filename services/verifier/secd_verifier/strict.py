"""The signature rules pgpy 0.6 does not enforce, checked by secd on top of its cryptography.

pgpy verifies the mathematics of a signature, but it accepts revoked keys and subkeys, compares
expiry with *now* and only for primary keys, skips the signature of a key that has expired
instead of saying so, and never checks that a subkey is bound to its primary key or may sign.
A stolen account must not be able to use any of that, so here every signature is checked with
the primitive alone and then against these rules, each failing with its own reason:

- the signature verifies over the payload (else: mismatch);
- hash and key algorithms are sound;
- neither the key nor the signing subkey is revoked (a revocation that verifies);
- the key has a valid self-signature; a subkey has a valid binding signature by its key;
- the signing key (primary or subkey) carries the signing flag, and a signing subkey carries a
  valid back-signature (cross-certification);
- the signature is not dated before the signing key was created;
- neither key nor subkey had expired when the signature was made (by its newest self-signature
  or binding, as gpg reads it, and by the one in force then), nor has it expired now (a
  signature's date is the signer's to choose, so an expired key could otherwise sign with any
  earlier date).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pgpy
    from cryptography.hazmat.primitives import hashes
    from pgpy.constants import KeyFlags, SecurityIssues, SignatureType

__all__ = ["Violation", "key_id_of", "verify_strictly"]

_CERTIFICATIONS = {
    SignatureType.Generic_Cert,
    SignatureType.Persona_Cert,
    SignatureType.Casual_Cert,
    SignatureType.Positive_Cert,
}
_FLAG_NAMES = {
    KeyFlags.Certify: "certify",
    KeyFlags.Sign: "sign",
    KeyFlags.EncryptCommunications: "encrypt",
    KeyFlags.EncryptStorage: "encrypt storage",
    KeyFlags.Authentication: "authenticate",
}


@dataclass(frozen=True)
class Violation:
    """A broken rule: a stable name for tests and logs, and the reason (no commit named)."""

    rule: str
    reason: str


def key_id_of(key: pgpy.PGPKey) -> str:
    """The 16-hex key id of a key or subkey, upper case."""
    return str(key.fingerprint).replace(" ", "").upper()[-16:]


def _valid(
    key: pgpy.PGPKey,
    signature: pgpy.PGPSignature,
    subject: pgpy.PGPKey | pgpy.PGPUID | bytes,
) -> bool:
    """The signature's mathematics only, with no policy (pgpy's policy is what we replace)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            digest = getattr(hashes, signature.hash_algorithm.name)()
            result = key._key.verify(signature.hashdata(subject), signature.__sig__, digest)
    except Exception:  # malformed packets raise anything; a signature we cannot check is invalid
        return False
    return result is True


def _day(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _flags(flags: set[KeyFlags]) -> str:
    names = [name for flag, name in _FLAG_NAMES.items() if flag in flags]
    return ", ".join(names) or "none"


def _self_signatures(primary: pgpy.PGPKey) -> list[pgpy.PGPSignature]:
    """Valid certifications of the key's user ids and direct-key signatures, by the key itself, oldest first."""  # noqa: E501
    keyid = primary.fingerprint.keyid
    found = [
        sig
        for sig in primary.__sig__
        if sig.type == SignatureType.DirectlyOnKey
        and sig.signer == keyid
        and _valid(primary, sig, primary)
    ]
    for uid in primary.userids:
        found += [
            sig
            for sig in uid.__sig__
            if sig.type in _CERTIFICATIONS and sig.signer == keyid and _valid(primary, sig, uid)
        ]
    return sorted(found, key=lambda sig: sig.created)


def _bindings(primary: pgpy.PGPKey, subkey: pgpy.PGPKey) -> list[pgpy.PGPSignature]:
    """Valid subkey binding signatures made by `primary` over `subkey`, oldest first."""
    keyid = primary.fingerprint.keyid
    found = [
        sig
        for sig in subkey.__sig__
        if sig.type == SignatureType.Subkey_Binding
        and not sig.embedded
        and sig.signer == keyid
        and _valid(primary, sig, subkey)
    ]
    return sorted(found, key=lambda sig: sig.created)


def _revoked(primary: pgpy.PGPKey, key: pgpy.PGPKey) -> pgpy.PGPSignature | None:
    """A valid revocation of `key` (the primary itself or one of its subkeys) by the primary."""
    kind = SignatureType.KeyRevocation if key is primary else SignatureType.SubkeyRevocation
    keyid = primary.fingerprint.keyid
    for sig in key.__sig__:
        if sig.type == kind and sig.signer == keyid and _valid(primary, sig, key):
            return sig
    return None


def _cross_signed(subkey: pgpy.PGPKey, binding: pgpy.PGPSignature) -> bool:
    """The binding carries a primary-key binding signature that the subkey made and verifies."""
    for sig in subkey.__sig__:
        if (
            sig.embedded
            and sig.parent is binding
            and sig.type == SignatureType.PrimaryKey_Binding
            and sig.signer == subkey.fingerprint.keyid
            and _valid(subkey, sig, subkey)
        ):
            return True
    return False


def _in_force(sigs: list[pgpy.PGPSignature], when: datetime) -> pgpy.PGPSignature:
    """The newest of `sigs` made at or before `when` (or the oldest, if all are later)."""
    earlier = [sig for sig in sigs if sig.created <= when]
    return earlier[-1] if earlier else sigs[0]


def _expiry(key: pgpy.PGPKey, sig: pgpy.PGPSignature) -> datetime | None:
    lifetime = sig.key_expiration
    if lifetime is None or lifetime == timedelta(0):
        return None
    expires: datetime = key.created + lifetime
    return expires


def verify_strictly(
    primary: pgpy.PGPKey,
    signer: pgpy.PGPKey,
    signature: pgpy.PGPSignature,
    payload: bytes,
    *,
    now: datetime | None = None,
) -> Violation | None:
    """None if `signer` (the primary or one of its subkeys) validly signed `payload`, else the first rule broken."""  # noqa: E501
    now = now or datetime.now(UTC)
    key_id = key_id_of(primary)
    is_subkey = signer is not primary
    sub_id = key_id_of(signer)
    signer_name = f"subkey {sub_id} of key {key_id}" if is_subkey else f"key {key_id}"

    if not _valid(signer, signature, payload):
        return Violation("mismatch", "the signature does not match the commit's content")
    weak = signature.hash_algorithm.is_considered_secure
    if weak != SecurityIssues.OK:
        return Violation(
            "weak-algorithm",
            f"the signature uses hash {signature.hash_algorithm.name}, which is not secure; "
            "sign again with a current gpg (SHA-256 or better)",
        )
    if signer.check_primitives() != SecurityIssues.OK:
        return Violation(
            "weak-algorithm",
            f"{signer_name} uses {signer.key_algorithm.name} at a size that is not secure; "
            "make a new key (ed25519 or RSA 3072+)",
        )
    if _revoked(primary, primary) is not None:
        return Violation(
            "revoked-key",
            f"is signed by key {key_id}, which is revoked; sign with a key that is not revoked",
        )
    if is_subkey and _revoked(primary, signer) is not None:
        return Violation(
            "revoked-subkey",
            f"is signed by {signer_name}, which is revoked; sign with a subkey that is not revoked",
        )
    self_sigs = _self_signatures(primary)
    if not self_sigs:
        return Violation(
            "no-self-signature",
            f"is signed by key {key_id}, which has no valid self-signature; "
            "export the key again with gpg --export",
        )
    bindings = _bindings(primary, signer) if is_subkey else []
    if is_subkey and not bindings:
        return Violation(
            "subkey-not-bound",
            f"is signed by subkey {sub_id}, which key {key_id} does not bind with a valid "
            "binding signature; sign with a subkey of your own key",
        )
    when = signature.created
    # What the key said about itself when it signed: flags and expiry in force at that time.
    capability = _in_force(bindings if is_subkey else self_sigs, when)
    if KeyFlags.Sign not in capability.key_flags:
        return Violation(
            "not-signing-key",
            f"is signed by {signer_name}, which is not allowed to sign "
            f"(its key flags: {_flags(capability.key_flags)}); sign with a signing key",
        )
    if is_subkey and not _cross_signed(signer, capability):
        return Violation(
            "no-back-signature",
            f"is signed by {signer_name}, whose binding has no valid back-signature "
            "(cross-certification); re-create the subkey with a current gpg",
        )
    if when < signer.created or when < primary.created:
        created = max(signer.created, primary.created)
        return Violation(
            "signed-before-key-created",
            f"carries a signature dated {_day(when)}, before {signer_name} was created "
            f"({_day(created)}); check the clock and sign again",
        )
    checks = [(primary, _in_force(self_sigs, when), self_sigs[-1], f"key {key_id}")]
    if is_subkey:
        checks.append((signer, capability, bindings[-1], signer_name))
    for key, then, latest, name in checks:
        # By what the key says now (gpg's view) and by what it said when it signed.
        for said in (latest, then):
            expired = _expiry(key, said)
            if expired is not None and expired <= when:
                return Violation(
                    "expired-when-signed",
                    f"is signed by {name}, which had expired on {_day(expired)}, before the "
                    f"signature was made ({_day(when)}); extend it and sign again",
                )
        expires = _expiry(key, latest)
        if expires is not None and expires <= now:
            return Violation(
                "expired",
                f"is signed by {name}, which has expired; extend it (gpg --quick-set-expire) "
                "and update the keyring",
            )
    return None
