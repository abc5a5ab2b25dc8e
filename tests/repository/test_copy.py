"""Offsite copies (repository/copy.py): local -> S3 (object-locked SeaweedFS) and S3 ->
local, each restored byte-exact and verified clean; only the chunks the copy lacks are
sent, an incremental reads only what it changed, pruned points arrive as tombstones."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from repo_helpers import CHUNK, FAST_KDF, make_disk, read_back, vm, write_point

from repository import KeepLast, Repository, prune, verify
from repository.copy import copy_points
from repository.errors import RepositoryError
from repository.s3 import open_s3_backend
from tests.s3_server import SeaweedServer

SIZE = 20 * CHUNK + 512


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("weed")) as server:
        server.make_bucket("copies", lock=True)
        yield server


def local(path: Path, passphrase: str) -> Repository:
    return Repository.init(path, CHUNK, passphrase, FAST_KDF)


def on_s3(weed: SeaweedServer, prefix: str, passphrase: str) -> Repository:
    backend = open_s3_backend(weed.options("copies", prefix, object_lock_days=2))
    return Repository.init(prefix, CHUNK, passphrase, FAST_KDF, backend=backend)


def test_local_to_s3_and_back_restores_byte_exact(weed: SeaweedServer, tmp_path: Path) -> None:
    src = local(tmp_path / "src", "source passphrase")
    d1 = make_disk(SIZE, seed=1, zero_slots=(2, 3))
    d2 = bytearray(d1)
    d2[5 * CHUNK : 5 * CHUNK + 4] = b"two!"
    p1 = write_point(src, vm(), {"d0": d1, "d1": make_disk(3 * CHUNK, seed=9)})
    p2 = write_point(src, vm(), {"d0": d2}, changed={"d0": {5}})
    p3 = write_point(src, vm(2), {"d0": make_disk(SIZE, seed=3)})

    cloud = on_s3(weed, "offsite", "cloud passphrase")
    first = copy_points(src, cloud)
    assert sorted(first.copied) == sorted([p1, p2, p3]) and not first.problems
    assert first.chunks_sent == first.chunks_read  # the copy held nothing
    # p2 maps its unchanged slots through p1's two indexes: only its new chunk was read.
    # p1: 19 chunks of d0 (21 slots, 2 zero) and 3 of d1; p2: its 1 new chunk (the rest
    # mapped through p1's indexes in both repositories); p3: 21.
    assert first.chunks_read == 19 + 3 + 1 + 21
    assert cloud.list_points() == sorted([p1, p2, p3])
    assert read_back(cloud, p1, "d0") == bytes(d1) and read_back(cloud, p2, "d0") == bytes(d2)
    assert read_back(cloud, p1, "d1") == bytes(make_disk(3 * CHUNK, seed=9))
    assert verify(cloud, read_data=True).ok
    # Re-encrypted for the copy's keys: the chunk ids differ, no key is shared.
    assert not {i.key for i in src.backend.list("chunks/")} & {
        i.key for i in cloud.backend.list("chunks/")
    }
    # Every object the copied points reference is locked in the bucket.
    m2 = cloud.load_manifest(p2)
    assert cloud.backend.retention_of(f"indexes/{m2.disks[0].index_id}") is not None

    again = copy_points(src, cloud)
    assert again.copied == [] and again.chunks_read == 0 and again.present == 3

    # S3 -> local: a copy of the copy, restored from the directory.
    back = local(tmp_path / "back", "home passphrase")
    third = copy_points(cloud, back, [vm(2).key])
    assert third.copied == [p3]
    assert read_back(back, p3, "d0") == bytes(make_disk(SIZE, seed=3))
    assert verify(back, read_data=True).ok


def test_pruned_points_become_tombstones_and_increments_send_only_new_chunks(
    tmp_path: Path,
) -> None:
    src = local(tmp_path / "src", "a")
    disk = make_disk(SIZE, seed=4)
    p1 = write_point(src, vm(), {"d0": disk})
    p2 = write_point(src, vm(), {"d0": disk}, changed={"d0": set()})
    prune(src, lambda _v, _p: KeepLast(1), now=datetime.now(UTC) + timedelta(hours=2))
    assert src.list_points() == [p2]
    dst = local(tmp_path / "dst", "b")
    first = copy_points(src, dst)
    assert first.copied == [p2] and first.tombstones == 1
    assert [t.point_id for t in dst.tombstones()] == [p1]
    assert verify(dst, read_data=True).ok  # the chain is whole: seq 1 tombstoned

    changed = bytearray(disk)
    changed[:5] = b"fresh"
    p3 = write_point(src, vm(), {"d0": changed}, changed={"d0": {0}})
    second = copy_points(src, dst)
    assert second.copied == [p3]
    assert second.chunks_read == 1 and second.chunks_sent == 1  # the one changed chunk
    assert read_back(dst, p3, "d0") == bytes(changed)
    assert verify(dst, read_data=True).ok


def test_chunk_size_mismatch_and_self_copy_refused(tmp_path: Path) -> None:
    src = local(tmp_path / "src", "a")
    other = Repository.init(tmp_path / "big", 2 * CHUNK, "b", FAST_KDF)
    with pytest.raises(RepositoryError, match="chunk size"):
        copy_points(src, other)
    with pytest.raises(RepositoryError, match="same repository"):
        copy_points(src, Repository.open(tmp_path / "src", "a"))
