"""Passwords travel sealed: encrypted to the executor's public key (X25519 sealed box).

The credentials service holds only the public key, so even it cannot read a password back out of
the log; a reader of the log sees ciphertext.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from nacl.public import PrivateKey, PublicKey, SealedBox

__all__ = ["generate_keypair", "load_private_key", "seal", "unseal"]


def generate_keypair(private_path: Path) -> str:
    """Write a new private key (mode 0600) and return the base64 public key."""
    key = PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(base64.b64encode(bytes(key)))
    return base64.b64encode(bytes(key.public_key)).decode()


def load_private_key(path: Path) -> PrivateKey:
    """Read a private key written by generate_keypair."""
    return PrivateKey(base64.b64decode(path.read_bytes()))


def seal(public_key_b64: str, secret: str) -> str:
    """Encrypt `secret` so that only the holder of the private key can read it."""
    box = SealedBox(PublicKey(base64.b64decode(public_key_b64)))
    return base64.b64encode(box.encrypt(secret.encode())).decode()


def unseal(private_key: PrivateKey, sealed: str) -> str:
    """Decrypt a sealed secret."""
    return SealedBox(private_key).decrypt(base64.b64decode(sealed)).decode()
