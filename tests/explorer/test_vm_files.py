"""File-level restore end to end: a GPT disk holding ext4 and NTFS (built by mke2fs -d and
mkntfs + ntfscp) is put into a simulator VM through its datastore, backed up (a full, then a
CBT incremental after files changed, by debugfs, without mounting), and `vigil files`
ls / get / find / diff must give back the exact trees and bytes; a damaged chunk under one
file fails that file by name and leaves the others readable."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from explorer_images import (
    MIB,
    add_ntfs_stream,
    build_disk,
    build_fs,
    describe,
    make_tree,
    need_tools,
)
from test_mount import fuse_usable, wait_mounted

from repository.codec import chunk_key

ROOT = Path(__file__).resolve().parents[2]
VM_NAME = "DC0_H0_VM0"
Rig = Any
BIG = 200 * MIB  # the large file


def vigil(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(rig.tmp / "vigil.toml"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok_json(rig: Rig, *args: str) -> Any:
    r = vigil(rig, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def debugfs(flat: Path, offset: int, commands: list[str]) -> None:
    subprocess.run(
        ["debugfs", "-w", "-f", "-", f"{flat}?offset={offset}"],
        input="\n".join(commands) + "\n", text=True, check=True, capture_output=True,
    )  # fmt: skip


async def put_disk(rig: Rig, image: Path) -> Any:
    """The VM's disk grown to the image's size and holding its bytes, uploaded into its
    -flat.vmdk through the datastore's HTTP interface (PUT /folder/...)."""
    vm = await rig.vm()
    await rig.grow(vm, size_of(image))
    await rig.put_flat(vm, read_all(image))
    return vm


def read_all(path: Path) -> bytes:
    return path.read_bytes()


def size_of(path: Path) -> int:
    return path.stat().st_size


def vigil_bytes(rig: Rig, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(rig.tmp / "vigil.toml"), *args],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )


def check_mount(rig: Rig, p1: str, p2: str, ext_src: Path, ntfs_src: Path, flat: Path) -> None:
    """Both points under <vm>/<point>/: the unchanged NTFS volume, a directory of the first
    and the second point's whole disk as a raw image, byte for byte."""
    mnt = rig.tmp / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "protector.cli", "--config", str(rig.tmp / "vigil.toml"),
         "mount", VM_NAME, str(mnt)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_mounted(mnt, proc)
        assert sorted(os.listdir(mnt / VM_NAME)) == sorted([p1, p2])
        ntfs = mnt / VM_NAME / p2 / "disk0p2"
        assert os.getxattr(ntfs / "readme.txt", "user.Zone.Identifier") == (
            b"[ZoneTransfer]\nZoneId=3\n"
        )
        assert describe(ntfs, kind="ntfs") == describe(ntfs_src, kind="ntfs")
        docs = mnt / VM_NAME / p1 / "disk0p1" / "docs"
        ro = {k: (*v[:3], v[3] & 0o555 if v[3] else v[3], v[4])
              for k, v in describe(ext_src / "docs", kind="ext4").items()}  # fmt: skip
        assert describe(docs, kind="ext4") == ro  # the view drops write bits
        assert sha(mnt / VM_NAME / p2 / "disks" / "disk0.img") == sha(flat)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    assert rc == 0 and not os.path.ismount(mnt)


def find_in(path: Path, start: int, sample: bytes) -> int:
    with open(path, "rb") as f:
        f.seek(start)
        at = f.read().find(sample)
    assert at >= 0
    return start + at


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            h.update(block)
    return h.hexdigest()


@pytest.mark.slow
async def test_browse_extract_search_diff_and_damage(vm_rig: Rig) -> None:
    rig = vm_rig
    need_tools("ext4")
    need_tools("ntfs")
    tmp: Path = rig.tmp
    ext_src, ntfs_src = tmp / "ext-src", tmp / "ntfs-src"
    make_tree(ext_src, "ext4", big=BIG)
    make_tree(ntfs_src, "ntfs", big=3 * MIB)
    ext_img, ntfs_img = tmp / "ext.img", tmp / "ntfs.img"
    build_fs("ext4", ext_src, ext_img, BIG + 112 * MIB, label="linuxroot")
    build_fs("ntfs", ntfs_src, ntfs_img, 48 * MIB, label="WinData")
    (tmp / "ads").write_bytes(b"[ZoneTransfer]\nZoneId=3\n")
    add_ntfs_stream(ntfs_img, tmp / "ads", "readme.txt", "Zone.Identifier")
    disk = tmp / "disk.img"
    ext_off, _ntfs_off = build_disk(disk, 0, [("ext4", ext_img), ("ntfs", ntfs_img)], "gpt")
    vm = await put_disk(rig, disk)
    for p in (disk, ext_img, ntfs_img):
        p.unlink()
    p1 = (await rig.backup(vm)).point_id

    # -- ls: the volumes, then a directory -------------------------------------------------
    vols = ok_json(rig, "files", "ls", p1)
    assert vols == [
        {"volume": "disk0p1", "disk": 0, "partition": 1, "fs": "ext4", "label": "linuxroot",
         "size": BIG + 112 * MIB},
        {"volume": "disk0p2", "disk": 0, "partition": 2, "fs": "ntfs", "label": "WinData",
         "size": 48 * MIB},
    ]  # fmt: skip
    assert ok_json(rig, "files", "ls", p1, "--disk", "0") == vols
    r = vigil(rig, "files", "ls", p1, "--disk", "1")
    assert r.returncode == 2 and "no disk 1" in r.stderr
    r = vigil(rig, "files", "ls", p1, "/disk0p9")
    assert r.returncode == 2 and "no volume 'disk0p9'" in r.stderr
    r = vigil(rig, "files", "ls", p1, "/disk0p1/no/such")
    assert r.returncode == 2 and "/disk0p1/no does not exist" in r.stderr
    docs = {r["name"]: r for r in ok_json(rig, "files", "ls", p1, "/disk0p1/docs")}
    assert set(docs) == {p.name for p in (ext_src / "docs").iterdir()}
    assert docs["script.sh"] == {
        "path": "/disk0p1/docs/script.sh", "name": "script.sh", "type": "file", "size": 18,
        "mtime": "2023-11-14T22:13:20Z", "mode": "0750", "target": None,
    }  # fmt: skip
    top = {r["name"]: r for r in ok_json(rig, "files", "ls", p1, "/disk0p1")}
    assert top["link to notes"]["type"] == "symlink"
    assert top["link to notes"]["target"] == "docs/notes.txt"
    assert top["big.bin"]["size"] == BIG

    # -- get: both volumes, whole, byte for byte ----------------------------------------------
    out = tmp / "out"
    res = ok_json(rig, "files", "get", p1, "/disk0p1", "/disk0p2", "--to", str(out))
    assert res["errors"] == [] and res["hardlinks"] == 1 and res["streams"] == 1
    (out / "disk0p1" / "lost+found").rmdir()
    assert describe(out / "disk0p1", kind="ext4") == describe(ext_src, kind="ext4")
    ads = out / "disk0p2" / "readme.txt:Zone.Identifier"
    assert ads.read_bytes() == b"[ZoneTransfer]\nZoneId=3\n"
    ads.unlink()
    got_ntfs = describe(out / "disk0p2", kind="ntfs")
    assert got_ntfs == describe(ntfs_src, kind="ntfs")

    # --stdout: one file's bytes
    r = vigil_bytes(rig, "files", "get", p1, "/disk0p1/docs/Ünïcødé Földer/report.txt", "--stdout")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ext_src / "docs" / "Ünïcødé Földer" / "report.txt").read_bytes()

    # -- find: every volume, by name ----------------------------------------------------------
    found = {f["path"] for f in ok_json(rig, "files", "find", p1, "*.txt")}
    want = {f"/disk0p1/{k}" for k in describe(ext_src, kind="ext4") if k.endswith(".txt")}
    want |= {f"/disk0p2/{k}" for k in describe(ntfs_src, kind="ntfs") if k.endswith(".txt")}
    assert found == want

    # -- an incremental after files changed, and the diff between the points ----------------
    flat = rig.flat(await rig.disk(vm))
    (tmp / "added.txt").write_bytes(b"a new file\n")
    (tmp / "readme.new").write_bytes(b"rewritten readme, longer than before\n")
    debugfs(flat, ext_off, [
        "rm docs/notes.txt", "write " + str(tmp / "added.txt") + " docs/added.txt",
        "rm readme.txt", "write " + str(tmp / "readme.new") + " readme.txt", "mkdir newdir",
    ])  # fmt: skip
    second = await rig.backup(vm)
    assert second.type == "incremental"
    p2 = second.point_id
    changes = ok_json(rig, "files", "diff", p1, p2)
    by_path = {c["path"]: c["change"] for c in changes}
    files_changed = {p: c for p, c in by_path.items() if not p.endswith(("docs", "/disk0p1"))}
    assert files_changed == {
        "/disk0p1/docs/added.txt": "added",
        "/disk0p1/newdir": "added",
        "/disk0p1/docs/notes.txt": "removed",
        "/disk0p1/readme.txt": "modified",
    }
    assert ok_json(rig, "files", "diff", p1, p2, "/disk0p2") == []
    new = tmp / "new"
    ok_json(rig, "files", "get", p2, "/disk0p1/readme.txt", "/disk0p1/docs", "--to", str(new))
    assert (new / "readme.txt").read_bytes() == (tmp / "readme.new").read_bytes()
    assert (new / "docs" / "added.txt").read_bytes() == b"a new file\n"
    assert not (new / "docs" / "notes.txt").exists()

    # -- the same points through `vigil mount` (where FUSE works) ---------------------------
    if fuse_usable() is None:
        check_mount(rig, p1, p2, ext_src, ntfs_src, flat)

    # -- a flipped chunk under big.bin: that file fails by name, the others still read ------
    sample = (ext_src / "big.bin").read_bytes()[100 * MIB : 100 * MIB + 4096]
    at = find_in(flat, ext_off, sample)
    _m, index = rig.repo.disk_index(p1, rig.repo.load_manifest(p1).disks[0].key)
    chunk = rig.repo.root / chunk_key(index.ids[at // index.chunk_size])
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    os.chmod(chunk, 0o600)
    chunk.write_bytes(bytes(blob))

    dmg = tmp / "damaged"
    r = vigil(rig, "files", "get", p1, "/disk0p1/big.bin", "/disk0p1/docs", "--to", str(dmg),
              "--json")  # fmt: skip
    assert r.returncode == 1, r.stderr
    errors = json.loads(r.stdout)["errors"]
    assert [e["path"] for e in errors] == ["/disk0p1/big.bin"]
    assert "damaged" in errors[0]["error"] and p1 in errors[0]["error"]
    assert "/disk0p1/big.bin" in r.stderr
    assert not (dmg / "big.bin").exists()  # no file that looks restored
    assert describe(dmg / "docs", kind="ext4") == describe(ext_src / "docs", kind="ext4")
    r2 = vigil_bytes(rig, "files", "get", p1, "/disk0p1/big.bin", "--stdout")
    assert r2.returncode == 1 and b"/disk0p1/big.bin" in r2.stderr
    assert len(r2.stderr.strip().splitlines()) == 1
    assert len(r2.stdout) < BIG  # it stopped at the damage, with no zeros in its place
    assert (ext_src / "big.bin").read_bytes().startswith(r2.stdout)
