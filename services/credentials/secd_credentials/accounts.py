"""Account names, passwords and the server-side password hashes made from them.

Hashes are computed here so that only a verifier ever travels in SQL text: a server's statement
log or an error message can then never hold a password in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from secd_shared.runid import parse_run_id

__all__ = [
    "ACCOUNT_PATTERN",
    "REPLAY_SUFFIX",
    "account_name",
    "is_replay_account",
    "mysql_native_hash",
    "new_password",
    "replay_account_name",
    "run_id_of",
    "scram_sha256_verifier",
]

# What backends accept as an account name: short enough for every server, nothing to escape.
ACCOUNT_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,31}")
ACCOUNT_PREFIX = "secd_"
SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16  # PostgreSQL's own default salt length


def account_name(run_id: str) -> str:
    """The database account of a run: ``secd_<run_id>``; ValueError for a malformed run id."""
    return ACCOUNT_PREFIX + parse_run_id(run_id)


# A run's second account, for neighbour replay (the same tables, a few rows left out).
REPLAY_SUFFIX = "_n"


def replay_account_name(run_id: str) -> str:
    """The neighbour-replay account of a run: ``secd_<run_id>_n``; ValueError for a bad run id."""
    return account_name(run_id) + REPLAY_SUFFIX


def is_replay_account(account: str) -> bool:
    """Whether `account` is a run's neighbour-replay account (by its name)."""
    return account.startswith(ACCOUNT_PREFIX) and account.endswith(REPLAY_SUFFIX)


def run_id_of(account: str) -> str:
    """The run id in an account's name (the primary account's or the replay account's)."""
    run_id = account.removeprefix(ACCOUNT_PREFIX)
    return run_id.removesuffix(REPLAY_SUFFIX) if is_replay_account(account) else run_id


def new_password() -> str:
    """A fresh random password: 43 characters of the URL-safe base64 alphabet (256 bits)."""
    return secrets.token_urlsafe(32)


def _check_password(password: str) -> bytes:
    if not isinstance(password, str) or not password:
        raise ValueError("password must be non-empty text")
    # PostgreSQL runs SASLprep over non-ASCII passwords; ASCII passes through it unchanged, so
    # keeping to ASCII makes this verifier match the server's without reimplementing SASLprep.
    if not password.isascii():
        raise ValueError("password must be ASCII (use new_password())")
    return password.encode("ascii")


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """PostgreSQL's stored password: ``SCRAM-SHA-256$<i>:<salt>$<StoredKey>:<ServerKey>``."""
    secret = _check_password(password)
    if salt is None:
        salt = secrets.token_bytes(SCRAM_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def mysql_native_hash(password: str) -> str:
    """MariaDB/MySQL's mysql_native_password hash: ``*`` + upper-case hex SHA1(SHA1(password))."""
    secret = _check_password(password)
    return "*" + hashlib.sha1(hashlib.sha1(secret).digest()).hexdigest().upper()  # noqa: S324
