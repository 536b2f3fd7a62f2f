"""`@secd.cache`: reuse a function's result while nothing it depends on has changed.

The key of a call covers the function's code, the code of every function and class of the
researcher's project that it reaches (transitively), the versions of the libraries involved, the
Python version, and the arguments (arrays and data frames from their bytes). A change anywhere in
that set gives a new key; older entries stay beside the new ones until the size limit evicts the
least recently used.

Where entries live: in a secd run (`SECD=PRODUCTION`) the cache storage the executor mounted
(`SECD_CACHE_DIR`, present when secd.yml sets `cache_dir`); there is no fallback, because a folder
inside the sandbox would vanish with the run: without a mounted cache the function simply runs,
and a warning says so once. Outside secd, `.secd-cache/` in the project folder.
"""

from __future__ import annotations

import functools
import inspect
import os
import platform
import re
import sys
import types
from pathlib import Path
from typing import Any, TypeVar, overload

import xxhash

from secd._hashing import Fingerprint, UnhashableError
from secd._project import Project, current_project, output_path
from secd._store import DamagedEntry, EntryStore, NotStorable

__all__ = ["CachedFunction", "cache", "output_path"]

CACHE_DIR_ENV = "SECD_CACHE_DIR"
MAX_BYTES_ENV = "SECD_CACHE_MAX_BYTES"
LOCAL_CACHE = ".secd-cache"
DEFAULT_MAX_BYTES = 10 * 1024**3

# Everything a result may depend on besides code and arguments: interpreter, platform, format.
_RUNTIME = "|".join(
    (
        "secd-cache-1",
        sys.implementation.cache_tag or sys.implementation.name,
        sys.version,
        platform.machine(),
        sys.byteorder,
    )
).encode()

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")

_warned: set[str] = set()
_stores: dict[tuple[Path, int], EntryStore] = {}

F = TypeVar("F")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr, flush=True)


def parse_size(value: int | str, *, what: str) -> int:
    """Bytes from 123, "500MB" or "10GiB"; a bad value is a one-line error naming `what`."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(str(value))
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise ValueError(f"{what} must be a size like 500MB or 10GiB (got {value!r})")
        size = int(float(match.group(1)) * unit)
    if size <= 0:
        raise ValueError(f"{what} must be more than 0 bytes (got {value!r})")
    return size


class CachedFunction:
    """A function whose results are kept on disk, keyed by its code, libraries and arguments."""

    def __init__(
        self,
        func: types.FunctionType,
        *,
        ignore: tuple[str, ...] = (),
        directory: str | os.PathLike | None = None,
        max_bytes: int | str | None = None,
        project_root: str | os.PathLike | None = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"secd.cache decorates a function, not a {type(func).__name__}")
        functools.update_wrapper(self, func)
        self._signature = inspect.signature(func)
        unknown = [name for name in ignore if name not in self._signature.parameters]
        if unknown:
            raise ValueError(
                f"secd.cache(ignore=...) names {unknown}, which {func.__qualname__} does not "
                f"take; its parameters are {list(self._signature.parameters)}"
            )
        self._ignore = frozenset(ignore)
        self._directory = Path(directory) if directory is not None else None
        self._max_bytes = (
            parse_size(max_bytes, what="secd.cache(max_bytes=...)")
            if max_bytes is not None
            else None
        )
        self._project_root = Path(project_root) if project_root is not None else None
        self._name = _folder_name(func)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """As a method: the instance is an argument like any other."""
        if instance is None:
            return self
        return types.MethodType(self, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The cached result for these arguments, computing it (once, across processes) if new."""
        store = self._store()
        if store is None:
            return self.__wrapped__(*args, **kwargs)
        path = store.entry_path(self._name, *self._keys(args, kwargs))
        found, value = self._load(store, path)
        if found:
            return value
        with store.computing(path):
            # Whoever held the lock before us may have just computed it.
            found, value = self._load(store, path)
            if found:
                return value
            value = self.__wrapped__(*args, **kwargs)
            try:
                store.save(path, value)
            except NotStorable as exc:
                _warn_once(f"secd.cache: the result of {self.__qualname__} is not cached: {exc}")
            return value

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The key these arguments get now: "<code key>/<argument key>" (computes nothing)."""
        return "/".join(self._keys(args, kwargs))

    def cache_directory(self) -> Path | None:
        """Where this function's entries go now; None when caching is off (see the warning)."""
        store = self._store()
        return store.root if store is not None else None

    # -- internals ---------------------------------------------------------------------------

    def _load(self, store: EntryStore, path: Path) -> tuple[bool, Any]:
        try:
            return store.load(path)
        except DamagedEntry as exc:
            print(
                f"secd.cache: recomputing {self.__qualname__}: the entry {path} is damaged: {exc}",
                file=sys.stderr,
                flush=True,
            )
            store.discard(path)
            return False, None

    def _project(self) -> Project:
        return current_project(self._project_root)

    def _store(self) -> EntryStore | None:
        max_bytes = self._max_bytes
        if max_bytes is None:
            configured = os.environ.get(MAX_BYTES_ENV)
            max_bytes = (
                parse_size(configured, what=MAX_BYTES_ENV) if configured else DEFAULT_MAX_BYTES
            )
        if os.environ.get("SECD") == "PRODUCTION":
            mounted = os.environ.get(CACHE_DIR_ENV)
            if not mounted:
                _warn_once(
                    "secd.cache: this run has no cache mounted (add cache_dir to secd.yml to get "
                    "one); cached functions run every time"
                )
                return None
            root = Path(mounted)
            if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
                _warn_once(
                    f"secd.cache: the mounted cache {root} is not a writable directory; cached "
                    "functions run every time (report this to your secd site)"
                )
                return None
        elif self._directory is not None:
            root = self._directory
        else:
            root = self._project().root / LOCAL_CACHE
        root = root.absolute()
        store = _stores.get((root, max_bytes))
        if store is None:
            store = _stores[(root, max_bytes)] = EntryStore(root, max_bytes)
        return store

    def _keys(self, args: tuple, kwargs: dict) -> tuple[str, str]:
        project = self._project()
        code = Fingerprint(project)
        code.reference(self.__wrapped__)
        code_key = _finish(code)
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = Fingerprint(project)
        for name, value in bound.arguments.items():
            if name in self._ignore:
                continue
            values.feed(b"n", name.encode())
            try:
                values.value(value)
            except UnhashableError as exc:
                raise TypeError(
                    f"secd.cache: argument {name!r} of {self.__qualname__} cannot be part of a "
                    f"cache key: {exc}; pass ignore=[{name!r}] if it does not change the result"
                ) from None
        return code_key, _finish(values)


def _finish(fingerprint: Fingerprint) -> str:
    digest = xxhash.xxh3_128(_RUNTIME)
    digest.update(fingerprint.digest())
    for library in sorted(fingerprint.libraries):
        digest.update(b"\n" + library.encode())
    return digest.hexdigest()


def _folder_name(func: Any) -> str:
    name = f"{getattr(func, '__module__', None)}.{getattr(func, '__qualname__', 'function')}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]


@overload
def cache(func: F, /) -> F: ...


@overload
def cache(
    *,
    ignore: tuple[str, ...] | list[str] = (),
    directory: str | os.PathLike | None = None,
    max_bytes: int | str | None = None,
    project_root: str | os.PathLike | None = None,
) -> Any: ...


def cache(
    func: Any = None,
    /,
    *,
    ignore: tuple[str, ...] | list[str] = (),
    directory: str | os.PathLike | None = None,
    max_bytes: int | str | None = None,
    project_root: str | os.PathLike | None = None,
) -> Any:
    """Cache a function's results on disk: `@secd.cache` or `@secd.cache(ignore=["verbose"])`.

    ignore: parameters that do not change the result (a logger, a progress flag).
    directory: the cache folder outside secd (default: .secd-cache in the project folder).
    max_bytes: the size limit, an int or "10GiB" (default: $SECD_CACHE_MAX_BYTES, else 10 GiB).
    project_root: the folder whose code is followed (default: $SECD_PROJECT_ROOT, else the
    working directory, or the main script's folder when the script lies outside it).
    """
    options = {
        "ignore": tuple(ignore),
        "directory": directory,
        "max_bytes": max_bytes,
        "project_root": project_root,
    }
    if func is None:
        return lambda inner: CachedFunction(inner, **options)
    return CachedFunction(func, **options)
