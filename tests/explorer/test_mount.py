"""The read-only view: its tree logic over a stored point (no FUSE needed), then the real
FUSE mount through `vigil mount`, unmounted by SIGTERM, where /dev/fuse can be used."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from explorer_images import (
    MIB,
    VM,
    build_disk,
    build_fs,
    describe,
    make_tree,
    need_tools,
    store_disks,
)

from explorer.disk import ChunkCache
from explorer.mounttree import MountTree, PointRef
from explorer.point import open_point
from repository import Repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Repository, str, Path, Path]:
    """A point whose one GPT disk holds ext4 (p1) and FAT32 (p2)."""
    need_tools("ext4")
    need_tools("fat")
    src, fat_src = tmp_path / "src", tmp_path / "fat-src"
    make_tree(src, "ext4", big=5 * MIB + 7)
    make_tree(fat_src, "fat", big=MIB)
    ext, fat = tmp_path / "ext.img", tmp_path / "fat.img"
    build_fs("ext4", src, ext, 48 * MIB)
    build_fs("fat", fat_src, fat, 40 * MIB)
    disk = tmp_path / "disk.img"
    build_disk(disk, 0, [("ext4", ext), ("fat", fat)], "gpt")
    repo = Repository.init(tmp_path / "repo")
    return repo, store_disks(repo, [disk]), src, disk


def test_tree_shows_points_volumes_files_and_raw_disks(stored) -> None:
    repo, point, src, disk = stored
    cache = ChunkCache()
    tree = MountTree([PointRef("files-vm", point, 1.7e9)], lambda p: open_point(repo, p, cache))
    try:
        assert tree.readdir("/") == ["files-vm"]
        assert tree.readdir("/files-vm") == [point]
        assert tree.readdir(f"/files-vm/{point}") == ["disk0p1", "disk0p2", "disks"]
        base = f"/files-vm/{point}/disk0p1"
        assert set(tree.readdir(base)) == {p.name for p in src.iterdir()} | {"lost+found"}
        a = tree.getattr(f"{base}/docs/script.sh")
        assert stat.S_ISREG(a["st_mode"]) and a["st_mode"] & 0o777 == 0o550  # no write bits
        assert a["st_size"] == 18 and a["st_mtime"] == 1_700_000_000
        assert stat.S_ISLNK(tree.getattr(f"{base}/link to notes")["st_mode"])
        assert tree.readlink(f"{base}/link to notes") == "docs/notes.txt"
        h = tree.open(f"{base}/big.bin")
        want = (src / "big.bin").read_bytes()
        assert tree.read(h, 4096, 5 * MIB - 100) == want[5 * MIB - 100 :]
        assert tree.read(h, MIB, 123) == want[123 : 123 + MIB]
        fat = f"/files-vm/{point}/disk0p2"
        assert "日本語の名前.txt" in tree.readdir(fat)
        # The raw disk reads as the image, anywhere.
        img = f"/files-vm/{point}/disks/disk0.img"
        assert tree.getattr(img)["st_size"] == disk.stat().st_size
        dh = tree.open(img)
        with open(disk, "rb") as f:
            f.seek(2 * MIB - 17)
            assert tree.read(dh, 3 * MIB, 2 * MIB - 17) == f.read(3 * MIB)
        for missing in (f"/files-vm/{point}/disk0p7", f"{base}/nope", "/other-vm"):
            with pytest.raises(FileNotFoundError):
                tree.getattr(missing)
        with pytest.raises(OSError) as exc:
            tree.readdir(f"{base}/big.bin")
        assert exc.value.errno == errno.ENOTDIR
    finally:
        tree.close()
        cache.close()


def fuse_usable() -> str | None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "no /dev/fuse or fusermount3"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse: {exc}"
    return None


def wait_mounted(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise AssertionError(f"vigil mount exited {proc.returncode}: {proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            raise AssertionError("vigil mount did not mount in time")
        time.sleep(0.05)


def test_vigil_mount_serves_the_tree_until_sigterm(stored, tmp_path: Path) -> None:
    why = fuse_usable()
    if why:
        pytest.skip(why)
    repo, point, src, disk = stored
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[vcenter]\nurl = "https://127.0.0.1:9/sdk"\nuser = "u"\npassword_env = "NOPE"\n'
        f'[repository]\npath = "{repo.root}"\n[policies]\npath = "pol"\n'
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), "mount", VM.name, str(mnt)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_mounted(mnt, proc)
        vol = mnt / VM.name / point / "disk0p1"
        got = describe(vol, kind="ext4")
        want = describe(src, kind="ext4")
        got.pop("lost+found")
        # The view is read-only: write bits dropped, everything else as in the guest.
        ro = {
            k: (*v[:3], (v[3] & 0o5555) if v[3] is not None else None, v[4])
            for k, v in want.items()
        }
        assert {k: v for k, v in got.items()} == ro
        raw = mnt / VM.name / point / "disks" / "disk0.img"
        assert (
            hashlib.sha256(raw.read_bytes()).digest() == hashlib.sha256(disk.read_bytes()).digest()
        )
        with pytest.raises(OSError) as exc:
            (vol / "new.txt").write_text("x")
        assert exc.value.errno == errno.EROFS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    assert rc == 0, proc.stderr.read() if proc.stderr else b""
    assert not os.path.ismount(mnt)
