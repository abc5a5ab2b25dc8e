"""The on-demand disk: any byte range reads as the stored image, chunks come through one
bounded cache shared by every open disk, and a damaged chunk is an I/O error, never zeros.
Extraction refuses to be steered out of its directory and never overwrites."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from explorer_images import MIB, build_fs, describe, need_tools, rand_bytes, store_disks
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.cli import Progress, files_get
from explorer.disk import ChunkCache, DamagedDiskError, RepoDisk
from explorer.point import open_point
from repository import Repository
from repository.codec import chunk_key

SIZE = 5 * MIB + 4096 + 512  # a short last chunk


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repository, str, bytes]:
    tmp = tmp_path_factory.mktemp("disk")
    data = bytearray(rand_bytes(SIZE, 7))
    data[MIB : 2 * MIB] = bytes(MIB)  # a zero chunk: a hole in the index
    path = tmp / "d.img"
    path.write_bytes(data)
    repo = Repository.init(tmp / "repo")
    return repo, store_disks(repo, [path]), bytes(data)


def disk_of(repo: Repository, point: str, cache: ChunkCache) -> RepoDisk:
    key = repo.load_manifest(point).disks[0].key
    _m, index = repo.disk_index(point, key)
    return RepoDisk(point, key, index, repo.slot_fetcher(point, key, index), cache)


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, SIZE + 10), length=st.integers(0, 3 * MIB))
def test_any_range_reads_as_the_image(image, offset: int, length: int) -> None:
    repo, point, data = image
    cache = ChunkCache()
    try:
        disk = disk_of(repo, point, cache)
        disk.seek(offset)
        assert disk.read(length) == data[offset : offset + length]
        assert disk.pread(length, offset) == data[offset : offset + length]
    finally:
        cache.close()


def test_cache_is_bounded_and_shared(image) -> None:
    repo, point, data = image
    cache = ChunkCache(max_bytes=2 * MIB)
    try:
        a, b = disk_of(repo, point, cache), disk_of(repo, point, cache)
        assert a.read() == data
        assert cache.size <= 2 * MIB
        misses = cache.misses
        b.seek(SIZE - 100)
        assert b.read() == data[-100:]  # the last chunk, cached by the other disk
        assert cache.misses == misses
    finally:
        cache.close()


def test_a_damaged_chunk_is_an_io_error_naming_point_and_offset(tmp_path: Path) -> None:
    data = rand_bytes(3 * MIB, 3)
    path = tmp_path / "d.img"
    path.write_bytes(data)
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [path])
    key = repo.load_manifest(point).disks[0].key
    _m, index = repo.disk_index(point, key)
    obj = repo.root / chunk_key(index.ids[1])
    blob = bytearray(obj.read_bytes())
    blob[40] ^= 1
    os.chmod(obj, 0o600)
    obj.write_bytes(bytes(blob))
    cache = ChunkCache()
    try:
        disk = disk_of(repo, point, cache)
        assert disk.pread(MIB, 0) == data[:MIB]  # the chunks around it still read
        assert disk.pread(MIB, 2 * MIB) == data[2 * MIB :]
        for _ in range(2):  # and again: a failed load is not cached as anything
            with pytest.raises(DamagedDiskError) as exc:
                disk.pread(10, MIB + 5)
            assert exc.value.errno == errno.EIO
            assert point in str(exc.value) and f"byte {MIB}" in str(exc.value)
    finally:
        cache.close()


def test_extraction_never_writes_through_a_symlink_nor_overwrites(tmp_path: Path) -> None:
    """`get` of a symlink `x -> OUTSIDE` and then of a directory also named `x` must not
    put the directory's files into OUTSIDE; an existing file is not replaced."""
    need_tools("ext4")
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b" / "x").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (src / "a" / "x").symlink_to(str(outside))
    (src / "b" / "x" / "payload").write_bytes(b"should not escape")
    (src / "b" / "keep.txt").write_bytes(b"from the point")
    img = tmp_path / "fs.img"
    build_fs("ext4", src, img, 16 * MIB)
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [img])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_bytes(b"local file")

    res = files_get(
        repo, point, ["/disk0/a/x", "/disk0/b/x", "/disk0/b/keep.txt"], str(dest), Progress(False)
    )
    assert list(outside.iterdir()) == []
    assert os.readlink(dest / "x") == str(outside)  # kept as the guest had it
    assert (dest / "keep.txt").read_bytes() == b"local file"
    failed = {e["path"]: e["error"] for e in res["errors"]}
    assert set(failed) == {"/disk0/b/x", "/disk0/b/keep.txt"}
    assert "File exists" in failed["/disk0/b/keep.txt"]


def test_hostile_names_inside_an_image_are_refused(tmp_path: Path) -> None:
    """A name with a slash cannot come from mke2fs, so the image is patched: a directory
    entry renamed to `../esc` (same length as `a_esc1`) must be refused, the rest kept."""
    need_tools("ext4")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_esc1").write_bytes(b"escape attempt")
    (src / "fine.txt").write_bytes(b"fine")
    img = tmp_path / "fs.img"
    build_fs("ext4", src, img, 16 * MIB)
    raw = bytearray(img.read_bytes())
    at = raw.find(b"a_esc1")
    assert at > 0 and raw.find(b"a_esc1", at + 1) == -1
    raw[at : at + 6] = b"../esc"
    img.write_bytes(bytes(raw))
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [img])
    dest = tmp_path / "deep" / "dest"
    res = files_get(repo, point, ["/disk0"], str(dest), Progress(False))
    assert [e["path"] for e in res["errors"]] == ["/disk0/../esc"]
    assert "refused" in res["errors"][0]["error"]
    assert not (tmp_path / "deep" / "esc").exists()
    assert (dest / "disk0" / "fine.txt").read_bytes() == b"fine"
    assert "fine.txt" in describe(dest / "disk0", kind="ext4")


def test_reads_at_random_places_of_a_file_match(tmp_path: Path) -> None:
    need_tools("ext4")
    src = tmp_path / "src"
    src.mkdir()
    data = rand_bytes(7 * MIB + 3, 5)
    (src / "f.bin").write_bytes(data)
    img = tmp_path / "fs.img"
    build_fs("ext4", src, img, 32 * MIB)
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [img])
    rnd = random.Random(1)
    with open_point(repo, point) as p:
        _vol, node = p.resolve("/disk0/f.bin")
        f = node.open()
        for _ in range(50):
            off, n = rnd.randrange(len(data)), rnd.randrange(3 * MIB)
            f.seek(off)
            assert f.read(n) == data[off : off + n]
