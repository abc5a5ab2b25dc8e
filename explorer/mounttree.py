"""The tree the FUSE view shows, as pure lookups over open points (no FUSE here):

    /<vm>/<point>/<volume>/...        the files of each readable volume
    /<vm>/<point>/disks/diskN.img     each disk as a raw image, read on demand

Everything is read-only. Points open on first use and stay open (each holds the
repository's shared read lock) until the view closes. NTFS alternate data streams appear
as `user.<stream>` extended attributes, as ntfs-3g shows them.
"""

from __future__ import annotations

import errno
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .disk import RepoDisk
from .nodes import DIR, FILE, SYMLINK, Node
from .point import ExplorerError, OpenPoint

DISKS_DIR = "disks"
NODE_CACHE_ENTRIES = 100_000  # looked-up entries kept (a few hundred bytes each)


def vm_dir_name(name: str, key: str) -> str:
    """A VM's directory: its name made one safe path component (or its key)."""
    clean = name.replace("/", "_").replace("\0", "_").strip()
    return clean if clean not in ("", ".", "..") else key


@dataclass(frozen=True)
class PointRef:
    vm: str  # directory name
    point_id: str
    created: float  # epoch seconds, for the directories' times


class MountTree:
    """Path lookups for the view. `opener(point_id)` returns an OpenPoint."""

    def __init__(self, points: list[PointRef], opener: Callable[[str], OpenPoint]) -> None:
        self.vms: dict[str, dict[str, PointRef]] = {}
        for p in points:
            self.vms.setdefault(p.vm, {})[p.point_id] = p
        self._opener = opener
        self._open: dict[str, OpenPoint] = {}
        self._nodes: OrderedDict[str, Node] = OrderedDict()
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            for p in self._open.values():
                p.close()
            self._open.clear()

    def _point(self, ref: PointRef) -> OpenPoint:
        with self._lock:
            op = self._open.get(ref.point_id)
            if op is None:
                op = self._open[ref.point_id] = self._opener(ref.point_id)
            return op

    def _split(self, path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def lookup(self, path: str) -> tuple[str, Any]:
        """("root"|"vm"|"point"|"disks", None), ("disk", RepoDisk), ("node", Node) or
        FileNotFoundError."""
        parts = self._split(path)
        if not parts:
            return "root", None
        points = self.vms.get(parts[0])
        if points is None:
            raise FileNotFoundError(errno.ENOENT, path)
        if len(parts) == 1:
            return "vm", None
        ref = points.get(parts[1])
        if ref is None:
            raise FileNotFoundError(errno.ENOENT, path)
        if len(parts) == 2:
            return "point", ref
        op = self._point(ref)
        if parts[2] == DISKS_DIR:
            if len(parts) == 3:
                return "disks", op
            disks = {f"disk{n}.img": d for n, d in enumerate(op.disks)}
            if len(parts) == 4 and parts[3] in disks:
                return "disk", disks[parts[3]]
            raise FileNotFoundError(errno.ENOENT, path)
        return "node", self._node(op, parts[2:])

    def _node(self, op: OpenPoint, parts: list[str]) -> Node:
        key = f"{op.point_id}/" + "/".join(parts)
        with self._lock:
            cached = self._nodes.get(key)
            if cached is not None:
                self._nodes.move_to_end(key)
                return cached
            try:
                if len(parts) == 1:
                    vol = op.volume(parts[0])
                    if vol.handle is None:
                        raise FileNotFoundError(errno.ENOENT, parts[0])
                    node = vol.root
                else:
                    node = self._node(op, parts[:-1]).child(parts[-1])
            except ExplorerError:
                raise FileNotFoundError(errno.ENOENT, "/".join(parts)) from None
            except NotADirectoryError:
                raise FileNotFoundError(errno.ENOTDIR, "/".join(parts)) from None
            self._remember(key, node)
            return node

    def _remember(self, key: str, node: Node) -> None:
        self._nodes[key] = node
        self._nodes.move_to_end(key)
        if len(self._nodes) > NODE_CACHE_ENTRIES:
            self._nodes.popitem(last=False)

    def _key_of(self, path: str) -> str:
        """The node-cache key of a path below a point: `<point id>/<volume>/...`."""
        parts = self._split(path)
        return f"{parts[1]}/" + "/".join(parts[2:])

    def getattr(self, path: str) -> dict[str, Any]:
        what, obj = self.lookup(path)
        if what in ("root", "vm", "point", "disks"):
            t = obj.created if what == "point" else 0.0
            return _attrs(stat.S_IFDIR | 0o555, 0, int(t * 1e9), 2)
        if what == "disk":
            return _attrs(stat.S_IFREG | 0o444, obj.size, 0, 1)
        node: Node = obj
        kind = node.kind
        if kind == DIR:
            fmt, size = stat.S_IFDIR, 0
        elif kind == SYMLINK:
            fmt, size = stat.S_IFLNK, len((node.target or "").encode())
        elif kind == FILE:
            fmt, size = stat.S_IFREG, node.size
        else:
            fmt, size = stat.S_IFREG, 0
        # Read-only view: no write bits, whatever the guest had.
        return _attrs(fmt | (node.mode & 0o5555), size, node.mtime_ns, 2 if kind == DIR else 1)

    def readdir(self, path: str) -> list[str]:
        what, obj = self.lookup(path)
        if what == "root":
            return sorted(self.vms)
        if what == "vm":
            return sorted(self.vms[self._split(path)[0]])
        if what == "point":
            op = self._point(obj)
            return [v.name for v in op.readable_volumes()] + [DISKS_DIR]
        if what == "disks":
            return [f"disk{n}.img" for n in range(len(obj.disks))]
        if what == "node" and obj.kind == DIR:
            # Remember the children: `ls -l` asks for each one's attributes next, and
            # finding a name again would read the whole directory per entry.
            prefix = self._key_of(path)
            names = []
            with self._lock:
                for child in obj.children():
                    names.append(child.name)
                    self._remember(f"{prefix}/{child.name}", child)
            return sorted(names)
        raise NotADirectoryError(errno.ENOTDIR, path)

    def readlink(self, path: str) -> str:
        what, obj = self.lookup(path)
        if what != "node" or obj.kind != SYMLINK:
            raise OSError(errno.EINVAL, path)
        return str(obj.target or "")

    def open(self, path: str) -> Any:
        """A reader object for `read`: the disk, or the file's data stream."""
        what, obj = self.lookup(path)
        if what == "disk":
            return obj
        if what == "node" and obj.kind == FILE:
            return obj.open()
        raise IsADirectoryError(errno.EISDIR, path)

    def read(self, handle: Any, size: int, offset: int) -> bytes:
        if isinstance(handle, RepoDisk):
            return handle.pread(size, offset)
        with self._lock:
            handle.seek(offset)
            return bytes(handle.read(size))

    def listxattr(self, path: str) -> list[str]:
        what, obj = self.lookup(path)
        return [f"user.{s}" for s in obj.streams()] if what == "node" else []

    def getxattr(self, path: str, name: str) -> bytes:
        what, obj = self.lookup(path)
        if what == "node" and name.startswith("user.") and name[5:] in obj.streams():
            return bytes(obj.open_stream(name[5:]).read())
        raise OSError(errno.ENODATA, name)


def _attrs(mode: int, size: int, mtime_ns: int, nlink: int) -> dict[str, Any]:
    return {
        "st_mode": mode,
        "st_size": size,
        "st_nlink": nlink,
        "st_mtime": mtime_ns / 1e9,
        "st_atime": mtime_ns / 1e9,
        "st_ctime": mtime_ns / 1e9,
        "st_uid": 0,
        "st_gid": 0,
        "st_blocks": (size + 511) // 512,
    }


def points_for(manifests: list[Any], target: str | None) -> list[PointRef]:
    """The points a mount shows: all, one point (by id) or one VM's (by name, inventory
    path, MoRef or instance UUID)."""
    if target:
        t = target.strip()
        chosen = [m for m in manifests if m.point_id == t]
        if not chosen:
            chosen = [
                m
                for m in manifests
                if t in (m.vm.name, m.vm.path, m.vm.moref)
                or t.lower() == m.vm.instance_uuid.lower()
            ]
        if not chosen:
            raise ExplorerError(
                f"no restore point or VM {target!r} (`vigil list` shows points and VMs)"
            )
        manifests = chosen
    return [
        PointRef(vm_dir_name(m.vm.name, m.vm.key), m.point_id, m.committed_at.timestamp())
        for m in manifests
    ]
