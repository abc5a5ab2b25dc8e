"""The `file` transport: a datastore mounted on this host (NFS or a datastore mount).

`[transport.file.datastores] NAME = "/mnt/..."` maps a datastore name to its mount path;
the disk's flat extent is read with large pread calls and written with pwrite. Bytes past
the end of a shorter file read as zeros (an unwritten tail is a hole).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

import structlog

from .descriptor import MAX_DESCRIPTOR, parse_descriptor_bytes
from .errors import DiskIoError, TransportUnavailable
from .extents import check_range, normalize
from .inflight import InFlight
from .model import DiskLocation, Extent

log = structlog.get_logger(__name__)

CONFIG_KEY = "transport.file.datastores"


def resolve(location: DiskLocation, datastores: Mapping[str, str]) -> Path:
    """The local path of the disk's flat extent, or TransportUnavailable saying why not."""
    mount = datastores.get(location.datastore)
    if mount is None:
        raise TransportUnavailable(
            f"datastore {location.datastore!r} has no mount path in [{CONFIG_KEY}]"
        )
    if not Path(mount).is_dir():
        raise TransportUnavailable(
            f"{CONFIG_KEY}.{location.datastore} = {mount!r} is not a directory"
        )
    try:
        rel = location.flat_extent_path()
    except ValueError as exc:
        raise TransportUnavailable(str(exc)) from None
    path = Path(mount) / rel
    if not path.is_file():
        raise TransportUnavailable(f"disk {location}: {path} does not exist")
    inside(path, mount, location)
    return path


def inside(path: Path, mount: str, location: DiskLocation) -> None:
    """Refuse a path that leaves its datastore: a symlink (or `..`) in the datastore
    pointing at /etc/shadow or another datastore would otherwise be read into a backup or,
    worse, overwritten by a restore. The mount path itself may be a symlink (ESXi's
    /vmfs/volumes/NAME is one), so both sides are compared after resolving."""
    root = Path(os.path.realpath(mount))
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise TransportUnavailable(
            f"disk {location}: {path} leads outside datastore mount {mount} (to {real}); "
            "vigil does not follow links out of a datastore"
        )
    if path.is_symlink():
        raise TransportUnavailable(
            f"disk {location}: {path} is a symbolic link; vigil reads and writes only the disk "
            "files themselves"
        )


class FileDisk:
    """A flat extent on a local mount. pread/pwrite are thread-safe: reads may overlap."""

    transport = "file"
    transport_mode = ""  # direct file access has no sub-modes
    parallel_reads = 8

    def __init__(
        self,
        path: str | os.PathLike[str],
        capacity: int,
        *,
        writable: bool = False,
        descriptor: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = str(path)
        self.descriptor = Path(descriptor) if descriptor else None
        self.capacity = capacity
        self.writable = writable
        self._guard = InFlight(self.path)
        # O_NOFOLLOW: a symlink swapped in after resolve() checked the path is refused.
        mode = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW
        try:
            self._fd: int | None = os.open(self.path, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DiskIoError(f"{self.path} is a symbolic link; refused") from None
            raise
        try:
            self.file_size = os.fstat(self._fd).st_size
            if self.file_size > capacity:
                raise DiskIoError(
                    f"{self.path}: file is {self.file_size} bytes, larger than the disk "
                    f"capacity {capacity}"
                )
            if not writable:
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            self.close()
            raise

    def _check(self, offset: int, length: int) -> None:
        check_range(self.path, offset, length, self.capacity)

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        with self._guard.op():
            return self._read(self._fd_or_raise(), offset, length)

    def _fd_or_raise(self) -> int:
        if self._fd is None:
            raise DiskIoError(f"{self.path} is closed")
        return self._fd

    def _read(self, fd: int, offset: int, length: int) -> bytes:
        data = os.pread(fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        if got < length:
            if offset + length <= self.file_size:
                raise DiskIoError(f"{self.path}: short read at offset {offset + got}")
            parts.append(bytes(length - got))  # past end of file: zeros
        return b"".join(parts)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the bytes at `offset` (no allocation: for recycled buffers)."""
        self._check(offset, len(view))
        with self._guard.op():
            self._read_into(self._fd_or_raise(), offset, view)

    def _read_into(self, fd: int, offset: int, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n <= 0:
                if offset + len(view) <= self.file_size:
                    raise DiskIoError(f"{self.path}: short read at offset {offset + got}")
                view[got:] = bytes(len(view) - got)  # past end of file: zeros
                return
            got += n

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.writable:
            raise DiskIoError(f"{self.path} was opened read-only")
        self._check(offset, len(data))
        view = memoryview(data)
        done = 0
        with self._guard.op():
            fd = self._fd_or_raise()
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)

    def allocated_extents(self) -> list[Extent] | None:
        """Data ranges from SEEK_DATA/SEEK_HOLE (None where the filesystem cannot say)."""
        with self._guard.op():
            return self._allocated_extents(self._fd_or_raise())

    def _allocated_extents(self, fd: int) -> list[Extent] | None:
        size = min(os.fstat(fd).st_size, self.capacity)
        out: list[tuple[int, int]] = []
        pos = 0
        try:
            while pos < size:
                try:
                    data = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # no data after pos
                        break
                    raise
                hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
                if data >= size:
                    break
                out.append((data, hole - data))
                pos = hole
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return None
            raise
        return normalize(out)

    def metadata(self) -> dict[str, str]:
        """The descriptor's ddb.* entries, when the descriptor sits beside the flat file."""
        if self.descriptor is None or not self.descriptor.is_file():
            return {}
        fd = os.open(self.descriptor, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return parse_descriptor_bytes(f.read(MAX_DESCRIPTOR + 1))

    def write_metadata(self, values: dict[str, str]) -> None:
        if values:
            log.warning("file.metadata_not_written", path=self.path, keys=sorted(values))

    def flush(self) -> None:
        if self.writable:
            with self._guard.op():
                os.fsync(self._fd_or_raise())

    def close(self) -> None:
        """Wait for reads and writes in flight, then close; safe to call twice."""
        if not self._guard.close():
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_file_disk(
    location: DiskLocation, datastores: Mapping[str, str], *, writable: bool = False
) -> FileDisk:
    flat = resolve(location, datastores)
    descriptor = Path(datastores[location.datastore]) / location.path
    if descriptor.exists():
        inside(descriptor, datastores[location.datastore], location)
    return FileDisk(
        flat,
        location.capacity_bytes,
        writable=writable,
        descriptor=descriptor if descriptor != flat else None,
    )
