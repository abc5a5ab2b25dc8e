"""Build real filesystems with their own tools (no mounting), put them in partition tables
written by sfdisk, store disks in a repository, and describe trees for comparison."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from repository import DiskRecord, Repository, VmIdentity

MIB = 1024 * 1024
TOOLS = {
    "ext4": ["mke2fs", "debugfs"],
    "xfs": ["mkfs.xfs"],
    "btrfs": ["mkfs.btrfs"],
    "fat": ["mkfs.fat", "mcopy"],
    "ntfs": ["mkntfs", "ntfscp"],
}
# Windows' basic-data and Linux-filesystem GPT types, and the MBR ids for them.
GPT_TYPE = {
    "ntfs": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
    "fat": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
}
MBR_TYPE = {"ntfs": "7", "fat": "c", "lvm": "8e"}
GPT_TYPE["lvm"] = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
FIXED_MTIME = 1_700_000_000  # 2023-11-14: mtimes the tools keep must come back exactly


def need_tools(kind: str) -> None:
    missing = [t for t in [*TOOLS[kind], "sfdisk"] if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make test installs them)")


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_tree(root: Path, kind: str, *, big: int, seed: int = 1) -> None:
    """A test tree with what each filesystem (and its build tool) can hold."""
    root.mkdir(parents=True)
    if kind == "xfs":  # a protofile separates its fields by blanks: no spaces in names
        return make_tree_named(root, kind, big, seed, lambda s: s.replace(" ", "_"))
    return make_tree_named(root, kind, big, seed, lambda s: s)


def make_tree_named(root: Path, kind: str, big: int, seed: int, nm: Any) -> None:
    posix = kind in ("ext4", "xfs", "btrfs")
    files: dict[str, bytes] = {
        "big.bin": rand_bytes(big, seed),
        nm("résumé ✓ long name.txt"): b"unicode\n" * 3,
        "日本語の名前.txt": b"nihongo\n",
        "readme.txt": b"read me\n",
    }
    if kind != "ntfs":  # ntfscp cannot create directories
        deep = "/".join(f"level{i:02d}" for i in range(24))
        files[nm(f"{deep}/deep file.txt")] = b"deep\n"
        files[nm("docs/Ünïcødé Földer/report.txt")] = rand_bytes(3000, seed + 1)
        files["docs/notes.txt"] = b"notes\n"
        (root / nm("empty dir")).mkdir()
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if posix:
        (root / "docs" / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
        (root / "docs" / "script.sh").chmod(0o750)
        (root / "docs" / "private.txt").write_bytes(b"secret\n")
        (root / "docs" / "private.txt").chmod(0o600)
        with open(root / "sparse.img", "wb") as f:  # 64 MiB, 2 data blocks
            f.seek(MIB)
            f.write(b"start of data")
            f.seek(64 * MIB - 5)
            f.write(b"end.\n")
        (root / nm("link to notes")).symlink_to("docs/notes.txt")
        (root / nm("absolute link")).symlink_to("/etc/hostname")
        (root / "dangling").symlink_to("no/such/file")
        if kind != "xfs":  # a protofile cannot express hard links
            os.link(root / "docs" / "notes.txt", root / nm("hardlink to notes"))
    for p in [*root.rglob("*"), root]:
        if not p.is_symlink():
            os.utime(p, (FIXED_MTIME, FIXED_MTIME))


def describe(root: Path, *, kind: str) -> dict[str, tuple[Any, ...]]:
    """{relative path: (type, sha256 or link target, size, mode, mtime)} of a local tree,
    keeping what `kind` can store: FAT and NTFS have no modes, xfs protofiles no mtimes."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        mode = stat.S_IMODE(st.st_mode) if kind in ("ext4", "xfs", "btrfs") else None
        mtime = int(st.st_mtime) if kind not in ("xfs",) else None
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(p), None, None, None)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", None, None, mode, mtime)
        else:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[rel] = ("file", digest, st.st_size, mode, mtime)
    return out


def _proto(root: Path) -> str:
    """An mkfs.xfs protofile for the tree (see mkfs.xfs(8), "-p protofile")."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(d: Path, indent: str) -> None:
        for p in sorted(d.iterdir()):
            st = p.lstat()
            m = f"{stat.S_IMODE(st.st_mode):03o}"
            if stat.S_ISLNK(st.st_mode):
                lines.append(f"{indent}{p.name} l--{m} 0 0 {os.readlink(p)}")
            elif stat.S_ISDIR(st.st_mode):
                lines.append(f"{indent}{p.name} d--{m} 0 0")
                walk(p, indent + " ")
                lines.append(f"{indent}$")
            else:
                lines.append(f"{indent}{p.name} ---{m} 0 0 {p}")

    walk(root, " ")
    lines.append("$")
    return "\n".join(lines) + "\n"


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True, env=env)


def build_fs(kind: str, src: Path, image: Path, size: int, label: str = "") -> None:
    """A `kind` filesystem holding the tree `src`, built by its own tools into `image`."""
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    if kind == "ext4":
        run("mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-d", src, image)
    elif kind == "btrfs":
        run("mkfs.btrfs", "-q", "-f", "-L", label, "--rootdir", src, image)
    elif kind == "xfs":
        proto = image.with_suffix(".proto")
        proto.write_text(_proto(src))
        run("mkfs.xfs", "-q", "-f", "-L", label, "-p", proto, image)
    elif kind == "fat":
        run("mkfs.fat", "-F", "32", "-n", label or "NO NAME", image)
        env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC"}
        items = [str(p) for p in sorted(src.iterdir())]
        run("mcopy", "-s", "-m", "-i", image, *items, "::/", env=env)
    elif kind == "ntfs":
        run("mkntfs", "-q", "-F", "-Q", "-L", label, image)
        for p in sorted(src.iterdir()):
            run("ntfscp", "-q", "-t", image, p, p.name)
    else:
        raise ValueError(kind)


def add_ntfs_stream(image: Path, local: Path, name: str, stream: str) -> None:
    run("ntfscp", "-q", "-N", stream, image, local, name)


def build_disk(disk: Path, size: int, parts: list[tuple[str, Path]], table: str) -> list[int]:
    """A disk with a GPT or MBR ("dos") table written by sfdisk, each (kind, image) in a
    partition of its image's size; returns the partitions' byte offsets."""
    disk.unlink(missing_ok=True)
    need = sum(img.stat().st_size + MIB for _k, img in parts) + 2 * MIB
    with open(disk, "wb") as f:
        f.truncate(max(size, need))
    script = [f"label: {table}"]
    start = 2048
    offsets = []
    for kind, img in parts:
        sectors = img.stat().st_size // 512
        if table == "gpt":
            ptype = GPT_TYPE.get(kind, "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        else:
            ptype = MBR_TYPE.get(kind, "83")
        script.append(f"start={start}, size={sectors}, type={ptype}")
        offsets.append(start * 512)
        start += sectors + 2048 - sectors % 2048
    subprocess.run(
        ["sfdisk", "-q", str(disk)], input="\n".join(script) + "\n", text=True, check=True,
        capture_output=True,
    )  # fmt: skip
    for (_kind, img), offset in zip(parts, offsets, strict=True):
        copy_into(img, disk, offset)
    return offsets


def copy_into(src: Path, dest: Path, offset: int) -> None:
    """Copy src into dest at offset, skipping zero blocks (dest stays sparse)."""
    zeros = bytes(MIB)
    with open(src, "rb") as fi, open(dest, "r+b") as fo:
        pos = 0
        while block := fi.read(MIB):
            if block != zeros[: len(block)]:
                os.pwrite(fo.fileno(), block, offset + pos)
            pos += len(block)


VM = VmIdentity("vc-uuid", "vm-uuid-1", name="files-vm", path="/DC0/vm/files-vm")


def store_disks(repo: Repository, disks: list[Path], vm: VmIdentity = VM) -> str:
    """Back the disk images up into the repository as one restore point (an incremental on
    the VM's previous point when there is one, writing only the slots that differ)."""
    started = datetime.now(UTC)
    with repo.begin_point(vm) as pw:
        records = []
        for n, path in enumerate(disks):
            key = f"disk-{n}"
            size = path.stat().st_size
            base = pw.previous_index(key)
            w = pw.disk_writer(size, base=base)
            cs = repo.chunk_size
            with open(path, "rb") as f:
                for slot in range(-(-size // cs)):
                    w.put(slot, f.read(cs))
            records.append(DiskRecord.for_index(key, w.finish(), base_name=path.name))
        return pw.commit(disks=records, started_at=started)
