"""One small read-only view over the files of every filesystem Dissect reads.

`Node` is what the rest of the explorer sees: name, type, size, mtime, mode, symlink
target, an identity for hard links, children, an open data stream and (NTFS) the names of
alternate data streams. Each filesystem's quirks stay here: the `.`/`..` entries, NTFS
metafiles and 8.3 short names, FAT's local-time timestamps, btrfs's (name, inode) pairs.
"""

from __future__ import annotations

import errno
import io
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any, BinaryIO

from .stream import SizedStream

FILE, DIR, SYMLINK, OTHER = "file", "dir", "symlink", "other"

_KIND = {stat.S_IFREG: FILE, stat.S_IFDIR: DIR, stat.S_IFLNK: SYMLINK}


@dataclass
class Node:
    """One directory entry. `raw` is the library's object; `fs` the filesystem kind."""

    fs: str
    name: str
    raw: Any

    @property
    def kind(self) -> str:
        return _kind(self)

    @property
    def size(self) -> int:
        return 0 if self.kind == DIR else _size(self)

    @property
    def mtime_ns(self) -> int:
        return _mtime_ns(self)

    @property
    def mode(self) -> int:
        """Permission bits (NTFS and FAT have none: 0644/0755, 0444 when read-only)."""
        return _mode(self)

    @property
    def target(self) -> str | None:
        return _target(self) if self.kind == SYMLINK else None

    @property
    def identity(self) -> tuple[str, int] | None:
        """The same for every name of one file (hard links); None where none exist."""
        return _identity(self)

    def children(self) -> Iterator[Node]:
        return _children(self)

    def child(self, name: str) -> Node:
        """The entry `name` of this directory: exact match first, then (NTFS, FAT, which
        ignore case) a case-insensitive one. FileNotFoundError when there is none."""
        if self.kind != DIR:
            raise NotADirectoryError(errno.ENOTDIR, f"{self.name or '/'} is not a directory")
        if self.fs == "ntfs":
            entries = list(_ntfs_entries(self.raw))
            match = [s for n, s in entries if n == name] or [
                s for n, s in entries if n.casefold() == name.casefold()
            ]
            if match:
                real = next(n for n, s in entries if s == match[0])
                return Node("ntfs", real, self.raw.ntfs.mft.get(match[0]))
        else:
            kids = list(self.children())
            for node in kids:
                if node.name == name:
                    return node
            if self.fs == "fat":
                for node in kids:
                    if node.name.casefold() == name.casefold():
                        return node
        raise FileNotFoundError(errno.ENOENT, f"no entry {name!r}", name)

    def open(self) -> BinaryIO:
        return _open(self, "")

    def streams(self) -> list[str]:
        """Names of alternate data streams (NTFS), besides the unnamed main stream."""
        if self.fs != "ntfs":
            return []
        from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE

        names = {a.name for a in self.raw.attributes[ATTRIBUTE_TYPE_CODE.DATA]}
        return sorted(n for n in names if n)

    def open_stream(self, name: str) -> BinaryIO:
        return _open(self, name)

    def stream_size(self, name: str) -> int:
        return int(self.raw.size(name))


def _kind(n: Node) -> str:
    r = n.raw
    if n.fs in ("ext", "xfs"):
        return _KIND.get(r.filetype, OTHER)
    if n.fs == "btrfs":
        return _KIND.get(r.type, OTHER)
    if n.fs == "fat":
        return DIR if r.is_directory() else FILE
    # NTFS: symlinks and junctions are reparse points; other reparse points are files.
    if r.is_symlink() or r.is_mount_point():
        return SYMLINK
    return DIR if r.is_dir() else FILE


def _size(n: Node) -> int:
    if n.fs == "ntfs":
        return int(n.raw.size()) if n.raw.has_stream("") else 0
    return int(n.raw.size)


def _mtime_ns(n: Node) -> int:
    r = n.raw
    if n.fs in ("ext", "xfs", "btrfs"):
        return int(r.mtime_ns)
    if n.fs == "fat":
        # FAT keeps local time without a zone; vigil reads it as UTC (as mtools writes it
        # on a UTC host) rather than guess the guest's zone.
        return int(r.mtime.replace(tzinfo=UTC).timestamp()) * 1_000_000_000
    from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE

    si = r.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
    return int(si.last_modification_time_ns) if si else 0


def _mode(n: Node) -> int:
    r = n.raw
    if n.fs == "ext":
        return stat.S_IMODE(r.inode.i_mode)
    if n.fs == "xfs":
        return stat.S_IMODE(r.inode.di_mode)
    if n.fs == "btrfs":
        return stat.S_IMODE(r.mode)
    kind = n.kind
    if kind == DIR:
        return 0o755
    if kind == SYMLINK:
        return 0o777
    readonly = r.is_readonly() if n.fs == "fat" else _ntfs_readonly(r)
    return 0o444 if readonly else 0o644


def _ntfs_readonly(r: Any) -> bool:
    from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE

    si = r.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
    return bool(si) and bool(si.file_attributes & 0x1)  # FILE_ATTRIBUTE_READONLY


def _target(n: Node) -> str:
    if n.fs == "ntfs":
        return str(n.raw.reparse_point_substitute_name)
    return str(n.raw.link)


def _identity(n: Node) -> tuple[str, int] | None:
    r = n.raw
    if n.fs in ("ext", "xfs"):
        return (n.fs, int(r.inum))
    if n.fs == "btrfs":
        return (f"btrfs{r.subvolume.objectid}", int(r.inum))
    if n.fs == "ntfs":
        return ("ntfs", int(r.segment))
    return None


# NTFS keeps its own metadata in records 0..23 ($MFT, $Bitmap, $Extend ...): not user files.
NTFS_FIRST_USER_RECORD = 24


def _children(n: Node) -> Iterator[Node]:
    r = n.raw
    if n.fs in ("ext", "xfs"):
        for child in r.iterdir():
            if child.filename not in (".", ".."):
                yield Node(n.fs, child.filename, child)
    elif n.fs == "btrfs":
        for name, child in r.iterdir():
            if name not in (".", ".."):
                yield Node(n.fs, name, child)
    elif n.fs == "fat":
        for child in r.iterdir():
            if child.name in (".", "..") or child.is_volume_id():
                continue
            yield Node(n.fs, fat_name(child), child)
    else:
        mft = r.ntfs.mft
        for name, segment in _ntfs_entries(r):
            yield Node(n.fs, name, mft.get(segment))


def _ntfs_entries(r: Any) -> Iterator[tuple[str, int]]:
    """(name, MFT record number) of a directory's user entries, from its index alone."""
    from dissect.ntfs.util import segment_reference

    for entry in r.iterdir(ignore_dos=True):
        segment = segment_reference(entry.header.FileReference)
        if segment >= NTFS_FIRST_USER_RECORD:
            yield entry.attribute.file_name, segment


def fat_name(entry: Any) -> str:
    """The name Windows and Linux show: the long name, else the 8.3 name with the case
    flags Windows NT keeps in DIR_NTRes (0x08: base lower case, 0x10: extension lower case),
    which mtools and Windows write for names like `readme.txt`."""
    if entry.ldirents:
        return str(entry.name)
    flags = entry.dirent.DIR_NTRes
    base, dot, ext = str(entry.short_name).partition(".")
    base = base.lower() if flags & 0x08 else base
    ext = ext.lower() if flags & 0x10 else ext
    return base + dot + ext


def _open(n: Node, stream: str) -> BinaryIO:
    if n.fs == "ntfs":
        data = n.raw.open(stream)
        valid = ntfs_valid_length(n.raw, stream)
        size = int(n.raw.size(stream))
        return data if valid is None or valid >= size else ZeroTail(data, valid, size)
    return n.raw.open()  # type: ignore[no-any-return]


def ntfs_valid_length(record: Any, stream: str) -> int | None:
    """An NTFS stream's valid data length: Windows reads everything past it as zeros (the
    clusters there were allocated by SetEndOfFile but never written, and still hold what a
    deleted file left). None for resident data, which has no such gap."""
    from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE

    for attr in record.attributes.find(stream, ATTRIBUTE_TYPE_CODE.DATA):
        header = attr.header
        if not header.resident and header.lowest_vcn == 0:
            return int(header.header.Form.Nonresident.ValidDataLength)
    return None


class ZeroTail(SizedStream):
    """A stream whose bytes from `valid` to `size` read as zeros."""

    def __init__(self, inner: BinaryIO, valid: int, size: int) -> None:
        super().__init__()
        self.inner, self.valid, self.size = inner, valid, size
        self._pos = 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = max(0, self._seek_target(offset, whence))
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        head = max(0, min(n, self.valid - self._pos))
        if head:
            self.inner.seek(self._pos)
            data = self.inner.read(head)
            view[: len(data)] = data
            if len(data) != head:
                raise OSError(errno.EIO, f"stream ends at byte {self._pos + len(data)}")
        view[head:n] = bytes(n - head)
        self._pos += n
        return n
