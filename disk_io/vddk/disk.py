"""A VDDK-backed disk: ConnectEx + Open, sector-exact Read/Write, metadata, allocated blocks.

One handle is used by one thread at a time (`_handle_lock`); ConnectEx, Open,
QueryAllocatedBlocks, Close and Disconnect run on the library's designated thread
(library.py says why), reads and writes on the caller's.

Credentials are the vCenter session's, as nbdkit's vddk plugin passes them when given a
cookie (plugins/vddk/vddk.c: credType VIXDISKLIB_CRED_SESSIONID, creds.sessionId.cookie =
the `vmware_soap_session` value, .userName = the session's user, .key = the password, NULL
when none): vigil never hands VDDK the password, so `key` stays NULL. VDDK guide: the
credType "can be VIXDISKLIB_CRED_UID (user name / password), VIXDISKLIB_CRED_SESSIONID (the
HTTP session ID)...".

The connection parameters and the per-VM calls (PrepareForAccess, EndAccess, Cleanup) live
in `access.py` and are re-exported here.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from ..errors import DiskIoError, VddkError
from ..extents import align_down, normalize, to_sectors
from ..model import SECTOR, DiskLocation, Extent, VcenterAccess
from .abi import (
    CODE_MASK,
    MIN_CHUNK_SECTORS,
    OPEN_READ_ONLY,
    VIX_E_FAIL,
    ffi,
)
from .access import ConnectParams, cleanup, end_access, prepare_for_access
from .library import VddkLibrary
from .thumbprint import thumbprint_hash

log = structlog.get_logger(__name__)

MAX_IO = 2 * 1024 * 1024  # bytes per VixDiskLib_Read/Write call (1–2 MiB is the sweet spot)
QUERY_WINDOW_CHUNKS = 8192  # allocated-block query window, in MIN_CHUNK_SECTORS chunks


class VddkDisk:
    """A disk opened through VixDiskLib. Blocking; call from worker threads."""

    transport = "vddk"
    transport_mode = ""  # set after Open: VixDiskLib_GetTransportMode

    def __init__(
        self,
        lib: VddkLibrary,
        location: DiskLocation,
        access: VcenterAccess,
        *,
        writable: bool = False,
        transport_modes: str | None = None,
        thumbprint: str | None = None,
    ) -> None:
        if not location.vm_moref:
            raise DiskIoError(f"disk {location}: the vddk transport needs the VM's MoRef")
        self._lib = lib
        self.location = location
        self.writable = writable
        self._handle_lock = threading.Lock()
        self._conn: Any = None
        self._handle: Any = None
        self._params = ConnectParams(lib, location, access, thumbprint)
        self._thumbprint = thumbprint
        try:
            self._connect(transport_modes)
            self._open()
            self.capacity, self.info = self._get_info()
        except BaseException:
            self.close()
            raise
        self.mode = self._transport_mode()
        self.transport_mode = self.mode
        log.info(
            "vddk.opened",
            disk=location.vmdk_path,
            vm=location.vm_moref,
            snapshot=location.snapshot_moref,
            mode=self.mode,
            capacity=self.capacity,
            writable=writable,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def _connect(self, modes: str | None) -> None:
        conn = ffi.new("VixDiskLibConnection *")
        snap = self.location.snapshot_moref
        snap_c = ffi.new("char[]", snap.encode()) if snap else ffi.NULL
        modes_c = ffi.new("char[]", modes.encode()) if modes else ffi.NULL
        ro = b"\x00" if self.writable else b"\x01"
        err = self._lib.run(
            lambda: self._lib.lib.VixDiskLib_ConnectEx(self._params.ptr, ro, snap_c, modes_c, conn)
        )
        self._lib.check(err, f"VixDiskLib_ConnectEx {self.location.vm_moref}")
        self._conn = conn[0]

    def _open(self) -> None:
        handle = ffi.new("VixDiskLibHandle *")
        flags = 0 if self.writable else OPEN_READ_ONLY
        path = self.location.vmdk_path.encode()
        c = self._conn
        err = self._lib.run(lambda: self._lib.lib.VixDiskLib_Open(c, path, flags, handle))
        if err and err & CODE_MASK == VIX_E_FAIL and self._params.ptr.serverName != ffi.NULL:
            # The one cause seen for Open's bare "Unknown error" is a thumbprint mismatch
            # (nbdkit's vddk plugin, RHBZ#1905772): VDDK checks the pin only here.
            shown = self._thumbprint or "none"
            self._lib.check(
                err,
                f"VixDiskLib_Open {self.location.vmdk_path} (VDDK says only this when the "
                f"server certificate does not match the thumbprint it was given, {shown}; "
                f"VDDK {self._lib.version} takes the {thumbprint_hash(self._lib.major).upper()} "
                "form unless transport.vddk.thumbprint says otherwise)",
            )
        self._lib.check(err, f"VixDiskLib_Open {self.location.vmdk_path}")
        self._handle = handle[0]

    def _get_info(self) -> tuple[int, dict[str, Any]]:
        info = ffi.new("VixDiskLibInfo **")
        with self._handle_lock:
            err = self._lib.lib.VixDiskLib_GetInfo(self._handle, info)
            self._lib.check(err, f"VixDiskLib_GetInfo {self.location.vmdk_path}")
            try:
                i = info[0]
                details = {
                    "capacity_sectors": int(i.capacity),
                    "adapter_type": int(i.adapterType),
                    "num_links": int(i.numLinks),
                    "uuid": ffi.string(i.uuid).decode() if i.uuid != ffi.NULL else "",
                    "parent_hint": (
                        ffi.string(i.parentFileNameHint).decode()
                        if i.parentFileNameHint != ffi.NULL
                        else ""
                    ),
                }
            finally:
                self._lib.lib.VixDiskLib_FreeInfo(info[0])
        return details["capacity_sectors"] * SECTOR, details

    def _transport_mode(self) -> str:
        if not self._lib.has("VixDiskLib_GetTransportMode"):
            return ""
        with self._handle_lock:
            mode = self._lib.lib.VixDiskLib_GetTransportMode(self._handle)
        return ffi.string(mode).decode() if mode != ffi.NULL else ""

    def close(self) -> None:
        """Close the handle and the connection; safe to call twice."""
        lib = self._lib
        with self._handle_lock:
            handle, self._handle = self._handle, None
            conn, self._conn = self._conn, None
        try:
            if handle is not None:
                err = lib.run(lambda: lib.lib.VixDiskLib_Close(handle))
                if err:
                    log.warning(
                        "vddk.close_failed",
                        disk=self.location.vmdk_path,
                        error=str(VddkError(err & 0xFFFF, lib.error_text(err))),
                    )
        finally:
            if conn is not None:
                err = lib.run(lambda: lib.lib.VixDiskLib_Disconnect(conn))
                if err:
                    log.warning(
                        "vddk.disconnect_failed",
                        vm=self.location.vm_moref,
                        error=lib.error_text(err),
                    )
            if self._params is not None:
                self._params.free()

    def __enter__(self) -> VddkDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> Any:
        if self._handle is None:
            raise DiskIoError(f"disk {self.location.vmdk_path} is closed")
        return self._handle

    def _check_range(self, offset: int, length: int) -> tuple[int, int]:
        first, count = to_sectors(offset, length)
        if offset + length > self.capacity:
            raise ValueError(
                f"disk {self.location.vmdk_path}: range offset={offset} length={length} ends "
                f"past the capacity {self.capacity}"
            )
        return first, count

    # -- data -----------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        first, count = self._check_range(offset, length)
        buf = bytearray(length)
        view = ffi.from_buffer("uint8_t[]", buf)
        self._transfer("VixDiskLib_Read", first, count, view)
        return bytes(buf)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if not self.writable:
            raise DiskIoError(f"disk {self.location.vmdk_path} was opened read-only")
        first, count = self._check_range(offset, len(data))
        view = ffi.from_buffer("uint8_t[]", data)
        self._transfer("VixDiskLib_Write", first, count, view)

    def _transfer(self, name: str, first: int, count: int, view: Any) -> None:
        """VixDiskLib_Read or _Write of `count` sectors from `first`, MAX_IO at a time."""
        step = MAX_IO // SECTOR
        call = getattr(self._lib.lib, name)
        with self._handle_lock:
            handle = self._require_open()
            done = 0
            while done < count:
                n = min(step, count - done)
                err = call(handle, first + done, n, view + done * SECTOR)
                if err:
                    self._lib.check(
                        err, f"{name} {self.location.vmdk_path} sectors {first + done}+{n}"
                    )
                done += n

    def flush(self) -> None:
        with self._handle_lock:
            err = self._lib.lib.VixDiskLib_Flush(self._require_open())
        self._lib.check(err, f"VixDiskLib_Flush {self.location.vmdk_path}")

    def allocated_extents(self) -> list[Extent] | None:
        """Allocated byte ranges, or None when this VDDK has no QueryAllocatedBlocks."""
        if not self._lib.has("VixDiskLib_QueryAllocatedBlocks"):
            return None
        total = self.capacity // SECTOR
        aligned = align_down(total, MIN_CHUNK_SECTORS)
        window = QUERY_WINDOW_CHUNKS * MIN_CHUNK_SECTORS
        found: list[tuple[int, int]] = []
        out = ffi.new("VixDiskLibBlockList **")
        query = self._lib.lib.VixDiskLib_QueryAllocatedBlocks
        free = self._lib.fn("VixDiskLib_FreeBlockList")
        with self._handle_lock:
            handle = self._require_open()
            start = 0
            while start < aligned:
                n = min(window, aligned - start)
                # VDDK 7.0.2 release notes: QueryAllocatedBlocks "should be called in the
                # same thread as open and close disk, not from read and write worker threads".
                err = self._lib.run(
                    lambda h=handle, s=start, k=n: query(h, s, k, MIN_CHUNK_SECTORS, out)
                )
                self._lib.check(
                    err,
                    f"VixDiskLib_QueryAllocatedBlocks {self.location.vmdk_path} "
                    f"sectors {start}+{n}",
                )
                try:
                    bl = out[0]
                    for i in range(bl.numBlocks):
                        b = bl.blocks[i]
                        found.append((int(b.offset) * SECTOR, int(b.length) * SECTOR))
                finally:
                    free(out[0])
                start += n
        if aligned < total:
            # The tail is smaller than one query chunk: report it allocated, never skip it.
            found.append((aligned * SECTOR, (total - aligned) * SECTOR))
        return normalize(found)

    # -- metadata -------------------------------------------------------------------------

    def _sized_query(self, call: Any, what: str) -> bytes:
        """The VDDK two-step: ask the size with a 1-byte buffer, then read."""
        need = ffi.new("size_t *")
        small = ffi.new("char[]", 1)
        err = call(small, 1, need)
        if err and need[0] <= 1:
            self._lib.check(err, what)
        if need[0] <= 1 and not err:
            return b""
        buf = ffi.new("char[]", need[0])
        err = call(buf, need[0], ffi.NULL)
        self._lib.check(err, what)
        return ffi.buffer(buf, need[0])[:]

    def metadata_keys(self) -> list[str]:
        lib = self._lib.lib
        with self._handle_lock:
            handle = self._require_open()
            raw = self._sized_query(
                lambda b, n, r: lib.VixDiskLib_GetMetadataKeys(handle, b, n, r),
                f"VixDiskLib_GetMetadataKeys {self.location.vmdk_path}",
            )
        return [k.decode("utf-8", "replace") for k in raw.split(b"\x00") if k]

    def read_metadata(self, key: str) -> str:
        lib = self._lib.lib
        key_c = key.encode()
        with self._handle_lock:
            handle = self._require_open()
            raw = self._sized_query(
                lambda b, n, r: lib.VixDiskLib_ReadMetadata(handle, key_c, b, n, r),
                f"VixDiskLib_ReadMetadata {self.location.vmdk_path} key {key!r}",
            )
        return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")

    def metadata(self) -> dict[str, str]:
        return {k: self.read_metadata(k) for k in self.metadata_keys()}

    def write_metadata(self, values: dict[str, str]) -> None:
        if not self.writable:
            raise DiskIoError(f"disk {self.location.vmdk_path} was opened read-only")
        with self._handle_lock:
            handle = self._require_open()
            for key, value in values.items():
                err = self._lib.lib.VixDiskLib_WriteMetadata(handle, key.encode(), value.encode())
                self._lib.check(
                    err, f"VixDiskLib_WriteMetadata {self.location.vmdk_path} key {key!r}"
                )


__all__ = ["ConnectParams", "VddkDisk", "cleanup", "end_access", "prepare_for_access"]
