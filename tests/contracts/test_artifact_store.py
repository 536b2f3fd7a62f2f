"""One contract for every ArtifactStore adapter: a folder, and the JetStream object store (real
NATS, as the services' own identities); and who may read and write the bucket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from secd_shared.artifacts import (
    ARTIFACT_BUCKET,
    ArtifactError,
    FolderArtifacts,
    NatsArtifacts,
    digest_bytes,
    get_tree,
    put_tree,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["folder", "nats"])
async def store(request, tmp_path: Path, nats_server, admin_bus) -> AsyncIterator:
    if request.param == "folder":
        yield FolderArtifacts(tmp_path / "artifacts")
        return
    # The executor's identity both reads and writes: what it may do, the contract needs.
    bus = await nats_server.bus("executor")
    try:
        yield NatsArtifacts(bus.js)
    finally:
        await bus.close()


def _file(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / f"f-{os.urandom(4).hex()}"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


async def test_bytes_come_back_by_their_digest(store) -> None:
    data = b"rows: 0\n" + os.urandom(64)
    digest = await store.put_bytes(data)
    assert digest == digest_bytes(data) and digest.startswith("sha256:")
    assert await store.has(digest)
    assert await store.get_bytes(digest, max_bytes=1024) == data
    # Putting it again is a no-op and names it the same.
    assert await store.put_bytes(data) == digest


async def test_a_big_file_streams_in_and_out(store, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    fd = _file(tmp_path, data)
    try:
        digest = await store.put_fd(fd)
    finally:
        os.close(fd)
    assert digest == digest_bytes(data)
    size = await store.get_file(digest, tmp_path / "out" / "copy.bin")
    assert size == len(data)
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
    with pytest.raises(ArtifactError, match="larger than"):
        await store.get_bytes(digest, max_bytes=1024)


async def test_the_empty_artifact(store, tmp_path: Path) -> None:
    digest = await store.put_bytes(b"")
    assert await store.get_bytes(digest, max_bytes=10) == b""
    assert await store.get_file(digest, tmp_path / "empty") == 0


async def test_an_unknown_or_malformed_digest_is_an_error_that_says_so(store, tmp_path) -> None:
    missing = "sha256:" + "0" * 64
    assert not await store.has(missing)
    with pytest.raises(ArtifactError, match="not in the store"):
        await store.get_bytes(missing, max_bytes=10)
    with pytest.raises(ArtifactError, match="not in the store"):
        await store.get_file(missing, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    for bad in ("sha256:xyz", "../../etc/passwd", "md5:" + "0" * 32):
        with pytest.raises(ArtifactError, match="not an artifact digest"):
            await store.get_bytes(bad, max_bytes=10)


async def test_get_file_never_overwrites(store, tmp_path: Path) -> None:
    digest = await store.put_bytes(b"new")
    (tmp_path / "taken").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        await store.get_file(digest, tmp_path / "taken")
    assert (tmp_path / "taken").read_bytes() == b"old"


async def test_a_tree_keeps_regular_files_and_leaves_links_out(store, tmp_path: Path) -> None:
    out = tmp_path / "output"
    (out / "plots").mkdir(parents=True)
    (out / "metrics.json").write_text('{"auc": 0.8}')
    (out / "plots" / "roc.csv").write_text("0,0\n1,1\n")
    (out / "empty.txt").write_bytes(b"")
    (out / "passwd").symlink_to("/etc/passwd")
    (out / "host").symlink_to("/etc")
    digest = await put_tree(store, out)
    # The same content gives the same tree digest.
    assert await put_tree(store, out) == digest
    tree = await get_tree(store, digest, tmp_path / "copy")
    assert [f.path for f in tree.files] == ["empty.txt", "metrics.json", "plots/roc.csv"]
    assert tree.size == len('{"auc": 0.8}') + 8
    assert (tmp_path / "copy" / "plots" / "roc.csv").read_text() == "0,0\n1,1\n"
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "empty.txt",
        "metrics.json",
        "plots",
    ]


async def test_a_hostile_manifest_cannot_write_outside_its_folder(store, tmp_path) -> None:
    blob = await store.put_bytes(b"x")
    for path in ("../escape", "/etc/cron.d/x", "a/../../b"):
        manifest = f'{{"version":1,"files":[{{"path":"{path}","digest":"{blob}","size":1}}]}}'
        digest = await store.put_bytes(manifest.encode())
        with pytest.raises(ArtifactError, match="not a tree manifest"):
            await get_tree(store, digest, tmp_path / f"dest-{os.urandom(2).hex()}")
    assert not (tmp_path.parent / "escape").exists()


async def test_the_object_store_checks_bytes_against_the_name_not_its_own_metadata(
    nats_server, admin_bus
) -> None:
    """A writer cannot make a known digest name other bytes: reads check the name itself."""
    bus = await nats_server.bus("builder")
    try:
        bucket = await bus.js.object_store(ARTIFACT_BUCKET)
        honest = b"the source of run r1"
        forged_name = digest_bytes(honest).removeprefix("sha256:")
        # Written straight through nats-py under someone else's digest.
        await bucket.put(forged_name, b"something else entirely")
    finally:
        await bus.close()
    reader = await nats_server.bus("publisher")
    try:
        store = NatsArtifacts(reader.js)
        with pytest.raises(ArtifactError, match="damaged"):
            await store.get_bytes(digest_bytes(honest), max_bytes=1024)
    finally:
        await reader.close()


@pytest.mark.parametrize(
    ("identity", "reads", "writes"),
    [
        ("builder", False, True),
        ("executor", True, True),
        ("publisher", True, False),
        ("gateway", False, False),
        ("verifier", False, False),
        ("credentials", False, False),
        ("auditor", False, False),
    ],
)
async def test_only_the_services_that_hand_artifacts_on_may_touch_them(
    nats_server, admin_bus, identity: str, reads: bool, writes: bool
) -> None:
    writer = await nats_server.bus("executor")
    try:
        known = await NatsArtifacts(writer.js).put_bytes(b"outputs of some run " + os.urandom(8))
    finally:
        await writer.close()
    bus = await nats_server.bus(identity)
    try:
        store = NatsArtifacts(bus.js)

        async def attempt(step) -> bool:
            # A refused request is a timeout to the client (the server tells only error_cb).
            try:
                await asyncio.wait_for(step, 1.0)
                return True
            except Exception:
                return False

        read, wrote = await asyncio.gather(
            attempt(store.get_bytes(known, max_bytes=1024)),
            attempt(NatsArtifacts(bus.js).put_bytes(b"from " + identity.encode() + os.urandom(8))),
        )
        assert (read, wrote) == (reads, writes)
    finally:
        await bus.close()
