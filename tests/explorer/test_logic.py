"""The pure parts, directly: path rules, filesystem detection, globbing, diffs, FAT names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from explorer.nodes import fat_name
from explorer.paths import glob_matches, safe_name, split_point_path
from explorer.tree import diff_records
from explorer.volumes import detect_fs, is_lvm_pv


def test_point_paths_split_into_volume_and_parts() -> None:
    assert split_point_path("/disk0p1/etc/fstab") == ("disk0p1", ["etc", "fstab"])
    assert split_point_path("disk0p1//etc/./x/") == ("disk0p1", ["etc", "x"])
    assert split_point_path("/") == ("", [])
    with pytest.raises(ValueError, match=r"'\.\.' is not allowed"):
        split_point_path("/disk0p1/etc/../../x")


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a.txt", True), ("résumé ✓", True), ("..", False), (".", False), ("", False),
     ("a/b", False), ("../../etc/passwd", False), ("x\0y", False), ("...", True)],
)  # fmt: skip
def test_only_plain_names_are_created(name: str, ok: bool) -> None:
    assert safe_name(name) is ok


def test_globs_match_names_or_whole_paths_ignoring_case() -> None:
    assert glob_matches("*.XLSX", "/disk0p2/Users/ann/Q3.xlsx", "Q3.xlsx")
    assert not glob_matches("*.xlsx", "/disk0p2/Users/ann/Q3.xlsx.bak", "Q3.xlsx.bak")
    assert glob_matches("/disk0p1/etc/*.conf", "/disk0p1/etc/ld.so.conf", "ld.so.conf")
    assert not glob_matches("/disk0p1/etc/*.conf", "/disk0p2/etc/ld.so.conf", "ld.so.conf")


def _fs_head(offset: int, magic: bytes, size: int = 0x11000) -> bytes:
    head = bytearray(size)
    head[offset : offset + len(magic)] = magic
    return bytes(head)


def test_filesystems_are_told_apart_by_their_superblocks() -> None:
    assert detect_fs(_fs_head(3, b"NTFS    ")) == "ntfs"
    assert detect_fs(_fs_head(0, b"XFSB")) == "xfs"
    assert detect_fs(_fs_head(0x10040, b"_BHRfS_M")) == "btrfs"
    assert detect_fs(_fs_head(0x438, b"\x53\xef")) == "ext"
    fat = bytearray(_fs_head(0x52, b"FAT32"))
    fat[510:512] = b"\x55\xaa"
    assert detect_fs(bytes(fat)) == "fat"
    mbr = bytearray(0x11000)  # a partition table alone is no filesystem
    mbr[510:512] = b"\x55\xaa"
    assert detect_fs(bytes(mbr)) is None
    assert detect_fs(b"") is None
    assert is_lvm_pv(_fs_head(512, b"LABELONE")) and not is_lvm_pv(bytes(4096))


def rec(kind: str = "file", size: int = 1, mtime: str = "t1", mode: str = "0644") -> dict:
    return {"type": kind, "size": size, "mtime": mtime, "mode": mode, "target": None}


def test_diff_reports_added_removed_and_modified_only() -> None:
    a = {"/v/same": rec(), "/v/gone": rec(), "/v/grew": rec(size=1), "/v/dir": rec("dir", 0)}
    b = {"/v/same": rec(), "/v/new": rec(), "/v/grew": rec(size=2), "/v/dir": rec("dir", 4096)}
    b["/v/chmod"] = rec(mode="0600")
    a["/v/chmod"] = rec()
    changes = [(c.change, c.path) for c in diff_records(a, b)]
    assert changes == [
        ("modified", "/v/chmod"),
        ("removed", "/v/gone"),
        ("modified", "/v/grew"),
        ("added", "/v/new"),
    ]  # a directory's size is no change; sorted by path


def test_fat_short_names_keep_the_case_windows_recorded() -> None:
    def entry(short: str, flags: int, long: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(
            ldirents=[1] if long else [], name=long or short, short_name=short,
            dirent=SimpleNamespace(DIR_NTRes=flags),
        )  # fmt: skip

    assert fat_name(entry("README.TXT", 0x18)) == "readme.txt"
    assert fat_name(entry("README.TXT", 0x08)) == "readme.TXT"
    assert fat_name(entry("README.TXT", 0)) == "README.TXT"
    assert fat_name(entry("MAKEFILE", 0x08)) == "makefile"
    assert fat_name(entry("LONGNA~1.TXT", 0x18, "Long Name.txt")) == "Long Name.txt"


def test_a_mount_shows_all_points_one_vm_or_one_point() -> None:
    from datetime import UTC, datetime

    from explorer.mounttree import points_for
    from explorer.point import ExplorerError

    def m(pid: str, name: str, uuid: str) -> SimpleNamespace:
        vm = SimpleNamespace(name=name, path=f"/DC0/vm/{name}", moref="vm-1",
                             instance_uuid=uuid, key="k" + uuid)  # fmt: skip
        return SimpleNamespace(point_id=pid, vm=vm, committed_at=datetime(2026, 1, 1, tzinfo=UTC))

    ms = [m("p1", "web/1", "U1"), m("p2", "web/1", "U1"), m("p3", "db", "U2")]
    assert [(r.vm, r.point_id) for r in points_for(ms, None)] == [
        ("web_1", "p1"), ("web_1", "p2"), ("db", "p3"),
    ]  # fmt: skip
    assert [r.point_id for r in points_for(ms, "/DC0/vm/db")] == ["p3"]
    assert [r.point_id for r in points_for(ms, "u1")] == ["p1", "p2"]
    assert [r.point_id for r in points_for(ms, "p2")] == ["p2"]
    with pytest.raises(ExplorerError, match="no restore point or VM 'nope'"):
        points_for(ms, "nope")
