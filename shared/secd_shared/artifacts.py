"""Artifacts: what services hand each other (a run's source, environment, outputs, job log), by
content digest, never by host path.

A service puts bytes (or a file, or a folder as a tree) into the store and gets back a digest
(`sha256:<hex>`); the event names the digest; the next service, on another machine if need be,
gets exactly those bytes back: every read is checked against the digest it was asked for, so a
store (or anyone who can write to it) cannot hand over something else under a known name.

The port is `ArtifactStore`, with two adapters and one contract suite (tests/contracts):

- `NatsArtifacts`: a JetStream object store bucket (`artifacts.bucket`, default SECD_ARTIFACTS),
  the default: nothing to share between machines but the bus;
- `FolderArtifacts`: a folder of files named by digest, for tests and single-machine set-ups.

A tree (a folder of files) is stored as its files plus a manifest (JSON: relative path, digest,
size of each regular file); the tree's digest is the manifest's. Folders are read and written
without following links (secd_shared.safepath): a job's output folder is researcher-made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from secd_shared.safepath import components, open_beneath, regular_files

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer
    from nats.js import JetStreamContext
    from nats.js.object_store import ObjectStore

    from secd_shared.config import Config

__all__ = [
    "ARTIFACT_BUCKET",
    "MANIFEST_VERSION",
    "ArtifactError",
    "ArtifactStore",
    "FolderArtifacts",
    "NatsArtifacts",
    "Tree",
    "TreeFile",
    "artifact_store",
    "digest_bytes",
    "digest_file",
    "get_tree",
    "put_tree",
]

MANIFEST_VERSION = 1
# The JetStream object store bucket (its stream is OBJ_<bucket>) the default adapter uses.
ARTIFACT_BUCKET = "SECD_ARTIFACTS"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1024 * 1024
# How long a read waits for the object store's next chunk before it gives up.
_CHUNK_WAIT_S = 30.0


class ArtifactError(Exception):
    """An artifact is missing, damaged (its bytes do not match its digest) or unreadable."""


def check_digest(digest: str) -> str:
    """`digest` when it is `sha256:<64 hex>`; ArtifactError otherwise."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ArtifactError(f"not an artifact digest: {str(digest)[:80]!r}")
    return digest


def digest_bytes(data: bytes) -> str:
    """The digest that names `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_file(fd: int) -> tuple[str, int]:
    """(digest, size) of an open file, read from its start."""
    h = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, _CHUNK):
        h.update(chunk)
        size += len(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return "sha256:" + h.hexdigest(), size


class ArtifactStore(Protocol):
    """Content-addressed bytes shared by secd's services. Every method is safe to repeat."""

    async def put_bytes(self, data: bytes) -> str:
        """Store `data`; returns its digest (storing what is there already is a no-op)."""
        ...

    async def put_fd(self, fd: int) -> str:
        """Store the open regular file `fd` (read from its start); returns its digest."""
        ...

    async def has(self, digest: str) -> bool:
        """Whether the store holds `digest`."""
        ...

    async def get_bytes(self, digest: str, *, max_bytes: int) -> bytes:
        """The bytes of `digest` (at most `max_bytes`), checked; ArtifactError otherwise."""
        ...

    async def get_file(self, digest: str, dest: Path) -> int:
        """Write the bytes of `digest` to a new file `dest`, checked; returns the size."""
        ...


class _Checked(io.RawIOBase):
    """A file being written from a store, hashing as it goes; `verify` compares at the end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.h = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(self.fd, view[written:])
        self.h.update(view)
        self.size += len(view)
        return len(view)

    def verify(self, digest: str) -> None:
        if "sha256:" + self.h.hexdigest() != digest:
            raise ArtifactError(f"artifact {digest[:19]}... is damaged: its bytes do not match")


def _new_file(dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


class FolderArtifacts:
    """Artifacts as files `<root>/sha256/<hex>`, written whole then renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        return self.root / "sha256" / check_digest(digest).removeprefix("sha256:")

    def _put(self, fd: int) -> str:
        digest, _ = digest_file(fd)
        target = self._path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        out = _new_file(partial)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            while chunk := os.read(fd, _CHUNK):
                os.write(out, chunk)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(partial, target)
        return digest

    async def put_bytes(self, data: bytes) -> str:
        """Store `data`."""
        digest = digest_bytes(data)
        if not self._path(digest).exists():
            await asyncio.to_thread(self._put_data, digest, data)
        return digest

    def _put_data(self, digest: str, data: bytes) -> None:
        target = self._path(digest)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        out = _new_file(partial)
        try:
            os.write(out, data)
        finally:
            os.close(out)
        os.replace(partial, target)

    async def put_fd(self, fd: int) -> str:
        """Store an open file."""
        return await asyncio.to_thread(self._put, fd)

    async def has(self, digest: str) -> bool:
        """Whether the file is there."""
        return self._path(digest).exists()

    async def get_bytes(self, digest: str, *, max_bytes: int) -> bytes:
        """The file's bytes, checked."""
        path = self._path(digest)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {digest} is not in the store") from None
        if len(data) > max_bytes:
            raise ArtifactError(f"artifact {digest[:19]}... is larger than {max_bytes} bytes")
        if digest_bytes(data) != digest:
            raise ArtifactError(f"artifact {digest[:19]}... is damaged: its bytes do not match")
        return data

    async def get_file(self, digest: str, dest: Path) -> int:
        """Copy the file to `dest`, checked."""
        return await asyncio.to_thread(self._get_file, digest, dest)

    def _get_file(self, digest: str, dest: Path) -> int:
        try:
            source = os.open(self._path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {digest} is not in the store") from None
        out = _new_file(dest)
        try:
            checked = _Checked(out)
            while chunk := os.read(source, _CHUNK):
                checked.write(chunk)
            checked.verify(digest)
            return checked.size
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise
        finally:
            os.close(source)
            os.close(out)


@dataclass(frozen=True)
class _Stored:
    """What a read needs of an object's info: its chunks' subject token and its size."""

    nuid: str
    size: int


class NatsArtifacts:
    """Artifacts in a JetStream object store bucket, one object per digest.

    Objects are never replaced: a digest that is there already is not written again (so no
    writer needs the right to purge). Reads check the bytes against the digest asked for, not
    against what the object's own metadata claims.
    """

    def __init__(self, js: JetStreamContext | None, bucket: str = ARTIFACT_BUCKET) -> None:
        # None only for a service set up without a bus (tests), which never reads or writes.
        self.js = js
        self.bucket = bucket
        self._store: ObjectStore | None = None

    def _jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise RuntimeError("this artifact store was made without a bus; it cannot be used")
        return self.js

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            self._store = await self._jetstream().object_store(self.bucket)
        return self._store

    @staticmethod
    def _name(digest: str) -> str:
        # Object names become subject tokens (base64): the hex alone keeps them short.
        return check_digest(digest).removeprefix("sha256:")

    async def has(self, digest: str) -> bool:
        """Whether the object is there (and not deleted)."""
        import nats.js.errors

        store = await self._bucket()
        try:
            await store.get_info(self._name(digest))
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
            return False
        return True

    async def put_bytes(self, data: bytes) -> str:
        """Store `data` as object `<hex>`."""
        digest = digest_bytes(data)
        if not await self.has(digest):
            store = await self._bucket()
            await store.put(self._name(digest), data)
        return digest

    async def put_fd(self, fd: int) -> str:
        """Store an open file, streamed in chunks."""
        digest, _ = await asyncio.to_thread(digest_file, fd)
        if not await self.has(digest):
            store = await self._bucket()
            # A file object of its own (a dup): nats-py reads it in a thread, chunk by chunk.
            reader = os.fdopen(os.dup(fd), "rb")
            try:
                await store.put(self._name(digest), reader)
            finally:
                reader.close()
        return digest

    async def get_bytes(self, digest: str, *, max_bytes: int) -> bytes:
        """The object's bytes, checked against `digest`."""
        store = await self._bucket()
        info = await self._info(store, digest)
        if info.size > max_bytes:
            raise ArtifactError(f"artifact {digest[:19]}... is larger than {max_bytes} bytes")
        data = bytes(await self._get(store, digest, None))
        if digest_bytes(data) != digest:
            raise ArtifactError(f"artifact {digest[:19]}... is damaged: its bytes do not match")
        return data

    async def get_file(self, digest: str, dest: Path) -> int:
        """Stream the object into `dest`, checked against `digest`."""
        store = await self._bucket()
        await self._info(store, digest)
        out = _new_file(dest)
        checked = _Checked(out)
        try:
            await self._get(store, digest, checked)
            checked.verify(digest)
            return checked.size
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise
        finally:
            os.close(out)

    async def _info(self, store: ObjectStore, digest: str) -> _Stored:
        import nats.js.errors

        try:
            info = await store.get_info(self._name(digest))
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
            raise ArtifactError(f"artifact {digest} is not in the store") from None
        if info.size is None:
            # nats-py's put always records the size; an object without one was not put by secd.
            raise ArtifactError(f"artifact {digest[:19]}... has no size in the store; put it again")
        return _Stored(nuid=info.nuid, size=info.size)

    async def _get(self, store: ObjectStore, digest: str, writeinto: _Checked | None) -> bytearray:
        """The object's chunks, in order, into `writeinto` (else returned in memory).

        Like nats-py's ObjectStore.get, but naming the stream, so a reader needs no right to
        list every stream's name.
        """
        info = await self._info(store, digest)
        data = bytearray()
        if info.size == 0:
            return data
        subject = f"$O.{self.bucket}.C.{info.nuid}"
        sub = await self._jetstream().subscribe(
            subject, stream=f"OBJ_{self.bucket}", ordered_consumer=True
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=_CHUNK_WAIT_S)
                except TimeoutError:
                    raise ArtifactError(
                        f"artifact {digest[:19]}...: no chunk arrived for {_CHUNK_WAIT_S:g} s"
                    ) from None
                if writeinto is not None:
                    await asyncio.to_thread(writeinto.write, msg.data)
                else:
                    data += msg.data
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return data


def artifact_store(config: Config, js: JetStreamContext | None) -> ArtifactStore:
    """The store `[artifacts]` names: the object store over `js`, or a folder."""
    if config.artifacts.kind == "folder":
        return FolderArtifacts(config.path(config.artifacts.folder))
    return NatsArtifacts(js)


# ---- trees ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeFile:
    """One regular file of a tree."""

    path: str
    digest: str
    size: int


@dataclass(frozen=True)
class Tree:
    """A tree's manifest: its files, sorted by path."""

    files: tuple[TreeFile, ...]

    def encode(self) -> bytes:
        """The manifest's bytes (its digest is the tree's)."""
        body = {
            "version": MANIFEST_VERSION,
            "files": [{"path": f.path, "digest": f.digest, "size": f.size} for f in self.files],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Tree:
        """A manifest read back; ArtifactError for anything that is not one."""
        try:
            body = json.loads(data)
            files = tuple(
                TreeFile(
                    path=_tree_path(f["path"]), digest=check_digest(f["digest"]), size=f["size"]
                )
                for f in body["files"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"not a tree manifest: {exc}") from None
        if body.get("version") != MANIFEST_VERSION:
            raise ArtifactError(f"tree manifest version {body.get('version')!r} is not known")
        return cls(files)

    @property
    def size(self) -> int:
        """All files' bytes together."""
        return sum(f.size for f in self.files)


def _tree_path(path: str) -> str:
    if not isinstance(path, str):
        raise ValueError("a path must be text")
    return "/".join(components(path))


MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def _files_below(folder: Path) -> Iterator[tuple[str, int]]:
    """(relative path, open fd) of each regular file below `folder`; the caller closes each."""
    top = open_beneath(folder.parent, [folder.name])
    try:
        for rel, parent_fd, _info in regular_files(top):
            name = os.path.basename(rel)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=parent_fd)  # fmt: skip
            except OSError:
                continue
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                continue
            yield rel, fd
    finally:
        os.close(top)


async def put_tree(store: ArtifactStore, folder: Path) -> str:
    """Store every regular file below `folder` (links and devices left out) and its manifest."""
    files: list[TreeFile] = []

    def listing() -> list[tuple[str, int]]:
        return list(_files_below(folder))

    opened = await asyncio.to_thread(listing)
    try:
        for rel, fd in opened:
            digest = await store.put_fd(fd)
            files.append(TreeFile(rel, digest, os.fstat(fd).st_size))
    finally:
        for _, fd in opened:
            os.close(fd)
    tree = Tree(tuple(sorted(files, key=lambda f: f.path)))
    return await store.put_bytes(tree.encode())


async def get_tree(store: ArtifactStore, digest: str, dest: Path) -> Tree:
    """Write the tree `digest` into the new folder `dest`; returns its manifest."""
    tree = Tree.decode(await store.get_bytes(digest, max_bytes=MAX_MANIFEST_BYTES))
    await asyncio.to_thread(dest.mkdir, parents=True)
    for entry in tree.files:
        try:
            await store.get_file(entry.digest, dest.joinpath(*entry.path.split("/")))
        except (FileExistsError, NotADirectoryError):
            raise ArtifactError(f"tree {digest[:19]}... names {entry.path!r} twice") from None
    return tree
