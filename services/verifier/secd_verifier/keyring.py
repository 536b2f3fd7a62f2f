"""The researchers' public keys: a folder per researcher holding armored OpenPGP keys."""

from __future__ import annotations

import logging
import re
import threading
import warnings
from pathlib import Path

from secd_shared.pushes import RESEARCHER_NAME

# pgpy 0.6 imports imghdr, deprecated since Python 3.11 (and gone in 3.13).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pgpy

__all__ = ["Keyring", "check_researcher", "normalize_key_id", "subkey_for"]

log = logging.getLogger(__name__)

# One rule for researcher names, shared with the gateway and the publisher.
_RESEARCHER = RESEARCHER_NAME
_KEY_ID = re.compile(r"[0-9A-F]{16}|[0-9A-F]{40}")

# One entry per .asc file: (name, mtime_ns, ctime_ns, size, inode); any change reloads the folder.
_Stamp = tuple[tuple[str, int, int, int, int], ...]


def check_researcher(name: str) -> str:
    """Return the name if it is a valid researcher name, else raise ValueError."""
    if not isinstance(name, str) or not _RESEARCHER.fullmatch(name):
        raise ValueError(
            f"invalid researcher name {name!r}: it must be 1 to 64 characters of a-z, 0-9, '_', '.'"
            " or '-', starting with a letter"
        )
    return name


def normalize_key_id(key_id: str) -> str | None:
    """A key id (16 hex) or fingerprint (40 hex) in upper case, or None if it is neither."""
    if not isinstance(key_id, str):
        return None
    cleaned = key_id.replace(" ", "").upper().removeprefix("0X")
    return cleaned if _KEY_ID.fullmatch(cleaned) else None


def subkey_for(key: pgpy.PGPKey, key_id: str) -> pgpy.PGPKey | None:
    """The key itself or the subkey of it that the key id or fingerprint names, if any."""
    wanted = normalize_key_id(key_id)
    if wanted is None:
        return None
    for candidate in (key, *key.subkeys.values()):
        fingerprint = str(candidate.fingerprint).replace(" ", "").upper()
        if wanted in (fingerprint, fingerprint[-16:]):
            return candidate
    return None


class Keyring:
    """Public keys in a folder: <dir>/<researcher>/*.asc (armored). Loaded lazily, reloaded when files change (mtime)."""  # noqa: E501

    def __init__(self, root: Path):
        """Read keys from root; nothing is loaded until a researcher's keys are asked for."""
        self.root = Path(root)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[_Stamp, list[pgpy.PGPKey]]] = {}

    def keys_of(self, researcher: str) -> list[pgpy.PGPKey]:
        """The public keys registered to a researcher (empty if none); files that fail to parse are skipped."""  # noqa: E501
        name = check_researcher(researcher)
        folder = self.root / name
        stamp = _stamp(folder)
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[0] == stamp:
                return list(cached[1])
        keys = _load(folder, stamp)
        with self._lock:
            self._cache[name] = (stamp, keys)
        return list(keys)

    def researchers(self) -> list[str]:
        """The researchers with a folder in the keyring, sorted; folders with invalid names are ignored."""  # noqa: E501
        try:
            entries = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        return [name for name in entries if _RESEARCHER.fullmatch(name)]

    def owner_of(self, key_id: str) -> str | None:
        """Which researcher holds this key id / subkey id / fingerprint (the first by name if several do)."""  # noqa: E501
        if normalize_key_id(key_id) is None:
            return None
        for name in self.researchers():
            if any(subkey_for(key, key_id) is not None for key in self.keys_of(name)):
                return name
        return None


def _stamp(folder: Path) -> _Stamp:
    try:
        files = [p for p in folder.iterdir() if p.suffix == ".asc" and p.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return ()
    entries = []
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # removed while we looked; the next call sees the folder as it is then
        entries.append((path.name, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    return tuple(sorted(entries))


def _load(folder: Path, stamp: _Stamp) -> list[pgpy.PGPKey]:
    keys: dict[str, pgpy.PGPKey] = {}
    for name, *_ in stamp:
        path = folder / name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                first, found = pgpy.PGPKey.from_file(str(path))
        except Exception as exc:  # pgpy raises anything from ValueError to struct.error
            log.warning("skipping %s: not an armored OpenPGP key (%s)", path, exc)
            continue
        # A file may hold several keys (an export of a whole keyring); pgpy returns them all here.
        for key in [first, *found.values()]:
            if not key.is_primary:
                continue
            if not key.is_public:
                log.warning("%s holds a private key; using only its public part", path)
                key = key.pubkey
            keys.setdefault(str(key.fingerprint).replace(" ", "").upper(), key)
    return list(keys.values())
