"""Each filesystem Dissect reads, built by its own tools inside GPT and MBR tables, stored
in a repository as a restore point: `files ls`, `get` and `find` must give back the exact
tree (names, types, bytes, modes, mtimes, link targets, hard links, holes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from explorer_images import (
    MIB,
    add_ntfs_stream,
    build_disk,
    build_fs,
    describe,
    make_tree,
    need_tools,
    rand_bytes,
    store_disks,
)

from explorer.cli import Progress, files_find, files_get, files_ls
from repository import Repository

FS_SIZE = {"ext4": 64, "btrfs": 160, "xfs": 320, "fat": 64, "ntfs": 64}
FS_NAME = {"ext4": "ext4", "btrfs": "btrfs", "xfs": "xfs", "fat": "fat32", "ntfs": "ntfs"}
CASES = [
    ("ext4", "gpt"),
    ("xfs", "dos"),
    ("btrfs", "gpt"),
    ("fat", "dos"),
    ("ntfs", "gpt"),
]


def without_mtime_of_dirs(tree: dict, kind: str) -> dict:
    # mcopy and ntfscp keep files' mtimes, not directories'.
    if kind in ("ext4", "btrfs"):
        return tree
    return {k: v[:4] + ((None,) if v[0] == "dir" else v[4:]) for k, v in tree.items()}


@pytest.mark.parametrize(("kind", "table"), CASES)
def test_point_gives_back_the_exact_tree(kind: str, table: str, tmp_path: Path) -> None:
    need_tools(kind)
    src = tmp_path / "src"
    make_tree(src, kind, big=6 * MIB + 12345)
    fs_img = tmp_path / "fs.img"
    build_fs(kind, src, fs_img, FS_SIZE[kind] * MIB, label="TESTLBL")
    if kind == "ntfs":
        stream = tmp_path / "stream"
        stream.write_bytes(b"zone identifier\n")
        add_ntfs_stream(fs_img, stream, "readme.txt", "Zone.Identifier")
    fs_size = fs_img.stat().st_size  # mkfs.btrfs --rootdir may grow it
    disk = tmp_path / "disk.img"
    build_disk(disk, (FS_SIZE[kind] + 4) * MIB, [(kind, fs_img)], table)
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [disk])
    fs_img.unlink()
    disk.unlink()

    vols = files_ls(repo, point, None, None)
    assert vols == [
        {
            "volume": "disk0p1",
            "disk": 0,
            "partition": 1,
            "fs": FS_NAME[kind],
            "label": "TESTLBL",
            "size": fs_size,
        }
    ]

    out = tmp_path / "out"
    res = files_get(repo, point, ["/disk0p1"], str(out), Progress(False))
    assert res["errors"] == []
    got = out / "disk0p1"
    if kind == "ext4":
        shutil.rmtree(got / "lost+found")
    if kind == "ntfs":  # the alternate data stream, beside its file
        assert res["streams"] == 1
        ads = got / "readme.txt:Zone.Identifier"
        assert ads.read_bytes() == b"zone identifier\n"
        ads.unlink()
    want_tree = without_mtime_of_dirs(describe(src, kind=kind), kind)
    assert without_mtime_of_dirs(describe(got, kind=kind), kind) == want_tree
    if kind in ("ext4", "btrfs"):
        assert res["hardlinks"] == 1
        assert (got / "hardlink to notes").stat().st_ino == (got / "docs/notes.txt").stat().st_ino
    if kind in ("ext4", "xfs", "btrfs"):
        sparse = got / "sparse.img"
        assert sparse.stat().st_size == 64 * MIB
        assert sparse.stat().st_blocks * 512 <= 4 * MIB  # holes stayed holes

    names = {r["path"] for r in files_find(repo, point, "*.TXT")}
    want = {"/disk0p1/" + k for k, v in describe(src, kind=kind).items() if k.endswith(".txt")}
    assert names == want

    listing = files_ls(repo, point, "/disk0p1", None)
    top = {r["name"]: r for r in listing if r["name"] != "lost+found"}
    assert set(top) == {p.name for p in src.iterdir()}
    big = top["big.bin"]
    assert big["type"] == "file" and big["size"] == 6 * MIB + 12345
    assert big["path"] == "/disk0p1/big.bin"
    if kind in ("ext4", "btrfs", "xfs"):
        link = top["link_to_notes" if kind == "xfs" else "link to notes"]
        assert link["type"] == "symlink" and link["target"] == "docs/notes.txt"
        assert top["docs"]["mode"] == f"{os.stat(src / 'docs').st_mode & 0o7777:04o}"


def test_lvm_logical_volumes_are_found_by_vg_and_lv_name(tmp_path: Path) -> None:
    """An ext4 filesystem inside LVM logical volume testvg/data, the physical volume being
    the disk's second MBR partition (samples/README.md tells how the PV was made)."""
    import zstandard

    need_tools("ext4")
    src = tmp_path / "src"
    make_tree(src, "ext4", big=MIB)
    lv = tmp_path / "lv.img"
    build_fs("ext4", src, lv, 32 * MIB)
    pv = tmp_path / "pv.img"
    head = zstandard.ZstdDecompressor().decompress(
        (Path(__file__).parent / "samples" / "lvm-pv-head.bin.zst").read_bytes()
    )
    with open(pv, "wb") as f:
        f.write(head)
        f.write(lv.read_bytes())
        f.truncate(64 * MIB)
    boot = tmp_path / "boot.img"
    build_fs("ext4", src / "docs", boot, 8 * MIB, label="boot")
    disk = tmp_path / "disk.img"
    build_disk(disk, 0, [("ext4", boot), ("lvm", pv)], "dos")
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [disk])

    vols = files_ls(repo, point, None, None)
    assert [(v["volume"], v["fs"], v["size"]) for v in vols] == [
        ("disk0p1", "ext4", 8 * MIB),
        ("testvg-data", "ext4", 32 * MIB),
    ]
    out = tmp_path / "out"
    res = files_get(repo, point, ["/testvg-data"], str(out), Progress(False))
    assert res["errors"] == []
    shutil.rmtree(out / "testvg-data" / "lost+found")
    assert describe(out / "testvg-data", kind="ext4") == describe(src, kind="ext4")


def ntfs3g_usable() -> str | None:
    if shutil.which("ntfs-3g") is None or shutil.which("fusermount3") is None:
        return "ntfs-3g or fusermount3 missing"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    return None


def test_ntfs_directories_hard_links_streams_and_holes(tmp_path: Path) -> None:
    """ntfscp cannot make directories: this NTFS is filled by ntfs-3g (userspace, through
    FUSE) with nested and large directories (an index of 600 entries spans many index
    blocks), a hard link, a sparse file and an alternate data stream."""
    why = ntfs3g_usable()
    if why:
        pytest.skip(why)
    need_tools("ntfs")
    src = tmp_path / "src"
    make_tree(src, "fat", big=2 * MIB + 1)  # directories, deep and unicode paths, empty dir
    many = src / "many"
    many.mkdir()
    for i in range(600):
        (many / f"entry {i:04d} ünïcode.txt").write_bytes(b"%d\n" % i)
    with open(src / "sparse.bin", "wb") as f:
        f.seek(16 * MIB)
        f.write(b"tail")
    os.link(src / "docs" / "notes.txt", src / "notes hardlink.txt")
    for p in [*src.rglob("*"), src]:
        os.utime(p, (1_700_000_000, 1_700_000_000))
    img = tmp_path / "ntfs.img"
    with open(img, "wb") as f:
        f.truncate(96 * MIB)
    subprocess.run(["mkntfs", "-q", "-F", "-Q", "-L", "TESTLBL", str(img)], check=True,
                   capture_output=True)  # fmt: skip
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["ntfs-3g", str(img), str(mnt), "-o", "streams_interface=xattr"], check=True)
    try:
        subprocess.run(["cp", "-a", f"{src}/.", str(mnt)], check=True)
        os.setxattr(mnt / "readme.txt", "user.Zone.Identifier", b"ZoneId=3\n")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    disk = tmp_path / "disk.img"
    build_disk(disk, 0, [("ntfs", img)], "gpt")
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [disk])

    out = tmp_path / "out"
    res = files_get(repo, point, ["/disk0p1"], str(out), Progress(False))
    assert res["errors"] == [] and res["hardlinks"] == 1 and res["streams"] == 1
    got = out / "disk0p1"
    assert (got / "readme.txt:Zone.Identifier").read_bytes() == b"ZoneId=3\n"
    (got / "readme.txt:Zone.Identifier").unlink()
    assert describe(got, kind="ntfs") == describe(src, kind="ntfs")
    assert (got / "notes hardlink.txt").stat().st_ino == (got / "docs/notes.txt").stat().st_ino
    assert (got / "sparse.bin").stat().st_blocks * 512 < MIB
    listing = files_ls(repo, point, "/disk0p1/many", None)
    assert sorted(r["name"] for r in listing) == sorted(p.name for p in many.iterdir())


def test_ntfs_bytes_past_the_valid_data_length_read_as_zeros(tmp_path: Path) -> None:
    """A file extended by SetEndOfFile but written only partly keeps stale clusters past
    its valid data length; Windows reads zeros there, and so must a restore. ntfscp cannot
    make such a file, so the image's MFT record is patched (ValidDataLength = 1 MiB)."""
    from dissect.ntfs import NTFS

    need_tools("ntfs")
    src = tmp_path / "src"
    src.mkdir()
    data = rand_bytes(3 * MIB, 11)
    (src / "prealloc.db").write_bytes(data)
    img = tmp_path / "ntfs.img"
    build_fs("ntfs", src, img, 32 * MIB)
    with open(img, "r+b") as f:
        fs = NTFS(f)
        rec = fs.mft.get("prealloc.db")
        [attr] = [a for a in rec.attributes[0x80] if not a.header.resident]
        at = fs.boot_sector.MftStartLcn * fs.cluster_size + rec.segment * fs._record_size
        f.seek(at)
        assert f.read(4) == b"FILE"
        field = at + attr.header.offset + 56  # Form.Nonresident.ValidDataLength
        assert field % 512 < 504  # not under an update-sequence fixup
        f.seek(field)
        assert int.from_bytes(f.read(8), "little") == len(data)
        f.seek(field)
        f.write(MIB.to_bytes(8, "little"))
    repo = Repository.init(tmp_path / "repo")
    point = store_disks(repo, [img])
    out = tmp_path / "out"
    res = files_get(repo, point, ["/disk0/prealloc.db"], str(out), Progress(False))
    assert res["errors"] == []
    got = (out / "prealloc.db").read_bytes()
    assert got == data[:MIB] + bytes(2 * MIB)
