"""Find the volumes on a point's disks and open the filesystem on each.

Order of checks on a disk: a filesystem on the whole disk (`disk0`), else a partition table
(MBR or GPT, through dissect.volume: `disk0p1`...), each partition being a filesystem or an
LVM physical volume; LVM logical volumes are named `vg-lv`. A filesystem is recognised by
its superblock magic (pure code: `detect_fs`) and opened with its Dissect library.
"""

from __future__ import annotations

import errno
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from .nodes import Node
from .stream import SizedStream

log = logging.getLogger(__name__)

# Enough of a volume's start to see every superblock magic below (btrfs: 64 KiB + 0x48).
PROBE_BYTES = 0x10000 + 0x1000

FS_BUFFER = 64 * 1024

# MBR entries that only hold other partitions (extended containers) have no filesystem.
MBR_CONTAINER_TYPES = {0x05, 0x0F, 0x85}


class Readable(Protocol):
    size: int

    def pread_into(self, out: memoryview, offset: int) -> int: ...


def detect_fs(head: bytes) -> str | None:
    """The filesystem kind whose superblock magic `head` (a volume's first bytes) carries."""
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[:4] == b"XFSB":
        return "xfs"
    if head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs"
    if head[0x438:0x43A] == b"\x53\xef":
        return "ext"
    if head[510:512] == b"\x55\xaa" and (head[0x36:0x39] == b"FAT" or head[0x52:0x57] == b"FAT32"):
        return "fat"
    return None


def is_lvm_pv(head: bytes) -> bool:
    # The LVM2 label sits in one of the first four sectors ("LABELONE" ... "LVM2 001").
    return any(head[s * 512 : s * 512 + 8] == b"LABELONE" for s in range(4))


class Slice(SizedStream):
    """A byte range of a disk as its own seekable stream, reading with positional reads so
    that any number of slices share one disk object safely."""

    def __init__(self, disk: Readable, offset: int, size: int) -> None:
        super().__init__()
        self.disk = disk
        self.offset = offset
        self.size = size
        self._pos = 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = self._seek_target(offset, whence)
        if target < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = target
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self.size - self._pos))
        n = self.disk.pread_into(view[:want], self.offset + self._pos) if want else 0
        self._pos += n
        return n

    def pread_into(self, out: memoryview, offset: int) -> int:
        want = max(0, min(len(out), self.size - offset))
        return self.disk.pread_into(out[:want], self.offset + offset) if want else 0

    def chunk_bytes(self, offset: int, length: int) -> bytes | None:
        """RepoDisk.chunk_bytes at this slice's offset (the range must be inside it)."""
        if offset < 0 or offset + length > self.size:  # a damaged run list
            raise OSError(errno.EIO, f"bytes {offset}+{length} are outside the volume")
        return self.disk.chunk_bytes(self.offset + offset, length)  # type: ignore[attr-defined]


@dataclass
class Volume:
    name: str
    disk: int
    partition: int | None
    size: int
    fs: str | None = None  # ext4, xfs, btrfs, ntfs, fat32 ... None: not a filesystem we read
    label: str | None = None
    kind: str | None = None  # the Node kind: ext, xfs, btrfs, ntfs, fat
    stream: BinaryIO | None = field(default=None, repr=False)
    handle: Any = field(default=None, repr=False)  # the Dissect filesystem object
    error: str | None = None  # why a recognised filesystem could not be opened

    @property
    def root(self) -> Node:
        if self.handle is None:
            raise FileNotFoundError(errno.ENOENT, f"volume {self.name} has no readable filesystem")
        return root_node(self.kind or "", self.handle)

    def as_dict(self) -> dict[str, Any]:
        return {
            "volume": self.name,
            "disk": self.disk,
            "partition": self.partition,
            "fs": self.fs,
            "label": self.label,
            "size": self.size,
        }


def _head(stream: Any) -> bytes:
    buf = bytearray(min(PROBE_BYTES, stream.size))
    n = stream.pread_into(memoryview(buf), 0)
    return bytes(buf[:n])


def discover(disks: Iterable[Readable]) -> list[Volume]:
    """Every volume on the disks, in disk and partition order; LVM volumes last."""
    volumes: list[Volume] = []
    pvs: list[tuple[int, Slice]] = []
    for n, disk in enumerate(disks):
        whole = Slice(disk, 0, disk.size)
        head = _head(whole)
        if detect_fs(head):
            volumes.append(open_volume(f"disk{n}", n, None, whole, head))
            continue
        if is_lvm_pv(head):
            pvs.append((n, whole))
            continue
        for part in _partitions(whole):
            number, offset, size, ptype = part
            if ptype in MBR_CONTAINER_TYPES:
                continue
            sl = Slice(disk, offset, size)
            phead = _head(sl)
            if is_lvm_pv(phead):
                pvs.append((n, sl))
                continue
            volumes.append(open_volume(f"disk{n}p{number}", n, number, sl, phead))
    volumes.extend(_lvm_volumes(pvs))
    return volumes


def _partitions(whole: Slice) -> list[tuple[int, int, int, Any]]:
    from dissect.volume.disk import Disk
    from dissect.volume.exceptions import DiskError

    try:
        d = Disk(whole)
    except DiskError:
        return []  # no partition table: an empty or unformatted disk
    parts = []
    for p in d.partitions:
        size = p.size
        if p.raw is not None and hasattr(p.raw, "last_lba"):
            # GPT's last LBA is inclusive; dissect.volume 3.18 leaves out that last sector.
            size = (p.raw.last_lba - p.raw.first_lba + 1) * d.sector_size
        if size > 0:
            parts.append((p.number, p.offset, size, p.type))
    return parts


def _lvm_volumes(pvs: list[tuple[int, Slice]]) -> list[Volume]:
    if not pvs:
        return []
    from dissect.volume.lvm import LVM2
    from dissect.volume.lvm.physical import LVM2Device

    groups: dict[str, list[Any]] = {}
    first_disk: dict[str, int] = {}
    for disk_no, pv in pvs:
        try:
            dev = LVM2Device(pv)
        except Exception as exc:  # a damaged label: say so, keep the other volumes
            log.warning("unreadable LVM physical volume: %s", exc)
            continue
        vg = next((k for k, v in dev.metadata.items() if isinstance(v, dict)), "")
        groups.setdefault(vg, []).append(dev)
        first_disk.setdefault(vg, disk_no)  # a group may span disks; report its first
    found: list[Volume] = []
    for vg_name, devs in groups.items():
        lvm = LVM2(devs)
        for lv_name, lv in lvm.vg.logical_volumes.items():
            if not lv.is_visible:
                continue
            raw = lv.open()
            size = raw.seek(0, io.SEEK_END)
            stream = _Positional(raw, size)
            name = f"{vg_name}-{lv_name}"
            found.append(open_volume(name, first_disk[vg_name], None, stream, _head(stream)))
    return found


class _Positional(io.RawIOBase):
    """A Dissect stream (which seeks its source) with the pread_into the probes use."""

    def __init__(self, raw: Any, size: int) -> None:
        super().__init__()
        self.raw = raw
        self.size = size

    def pread_into(self, out: memoryview, offset: int) -> int:
        self.raw.seek(offset)
        data = self.raw.read(len(out))
        out[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self.raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self.raw.tell())

    def readinto(self, buf: Any) -> int:
        data = self.raw.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def open_volume(name: str, disk: int, partition: int | None, stream: Any, head: bytes) -> Volume:
    vol = Volume(name, disk, partition, stream.size, stream=stream)
    kind = detect_fs(head)
    if kind is None:
        return vol
    vol.kind = kind
    # Filesystem readers make many small reads close together (inodes, directory blocks):
    # a buffer serves them without a chunk-cache lookup each; seeks inside it are free.
    buffered = io.BufferedReader(stream, buffer_size=FS_BUFFER)
    try:
        vol.handle, vol.fs, vol.label = _open_fs(kind, buffered)
    except OSError:
        raise  # damaged chunks under the superblock: the caller reports them
    except Exception as exc:  # the library rejected what the magic promised
        vol.fs, vol.error = kind, f"{type(exc).__name__}: {exc}"
        log.warning("volume %s: cannot open %s: %s", name, kind, exc)
    return vol


def _open_fs(kind: str, stream: Any) -> tuple[Any, str, str | None]:
    if kind == "ext":
        from dissect.extfs import ExtFS
        from dissect.extfs.c_ext import EXT3, EXT4

        fs = ExtFS(stream)
        name = {EXT4: "ext4", EXT3: "ext3"}.get(fs.type, "ext2")
        return fs, name, fs.volume_name or None
    if kind == "xfs":
        from dissect.xfs import XFS

        fs = XFS(stream)
        return fs, "xfs", fs.name or None
    if kind == "btrfs":
        from dissect.btrfs import Btrfs

        fs = Btrfs(stream)
        return fs, "btrfs", fs.label or None
    if kind == "ntfs":
        from dissect.ntfs import NTFS

        fs = NTFS(stream)
        return fs, "ntfs", fs.volume_name or None
    from dissect.fat import FATFS

    fs = FATFS(stream)
    label = fs.volume_label.strip()
    # "NO NAME" is what formatters write when no label was given.
    return fs, fs.type.name.lower(), None if label in ("", "NO NAME") else label


def root_node(kind: str, fs: Any) -> Node:
    if kind == "ntfs":
        return Node(kind, "", fs.mft.get(5))  # record 5 is the root directory
    if kind == "fat":
        return Node(kind, "", fs.root)
    return Node(kind, "", fs.get("/"))
