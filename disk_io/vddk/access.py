"""The VDDK connection parameters (the vCenter session's cookie, never the password; see
disk.py) and the per-VM calls that take them without opening a disk: PrepareForAccess,
EndAccess and Cleanup."""

from __future__ import annotations

from typing import Any

from ..model import DiskLocation, VcenterAccess
from .abi import CRED_SESSIONID, ffi
from .library import VddkLibrary


class ConnectParams:
    """VixDiskLibConnectParams plus the C strings it points to (kept alive with it)."""

    def __init__(
        self,
        lib: VddkLibrary,
        loc: DiskLocation,
        access: VcenterAccess,
        thumbprint: str | None = None,
    ) -> None:
        self._lib = lib
        self._keep: list[Any] = []
        if lib.has("VixDiskLib_AllocateConnectParams"):
            self.ptr = lib.lib.VixDiskLib_AllocateConnectParams()
            self._owned = True
        else:
            self.ptr = ffi.new("VixDiskLibConnectParams *")
            self._owned = False
        p = self.ptr
        p.vmxSpec = self._str(f"moref={loc.vm_moref}")
        p.serverName = self._str(access.host)
        # The thumbprint in the library's own format (thumbprint.py); vigil's SHA-256 pin is
        # never handed over as is.
        p.thumbPrint = self._str(thumbprint) if thumbprint else ffi.NULL
        p.credType = CRED_SESSIONID
        p.creds.sessionId.cookie = self._str(access.cookie_value())
        p.creds.sessionId.userName = self._str(access.user) if access.user else ffi.NULL
        p.creds.sessionId.key = ffi.NULL
        p.port = access.port

    def _str(self, value: str) -> Any:
        c = ffi.new("char[]", value.encode())
        self._keep.append(c)
        return c

    def free(self) -> None:
        if self._owned and self.ptr is not None:
            # Our strings are cffi-owned: detach them so VDDK frees only its own memory.
            p = self.ptr
            p.vmxSpec = p.serverName = p.thumbPrint = ffi.NULL
            p.creds.sessionId.cookie = p.creds.sessionId.userName = ffi.NULL
            self._lib.lib.VixDiskLib_FreeConnectParams(p)
        self.ptr = None
        self._keep.clear()


def prepare_for_access(
    lib: VddkLibrary,
    location: DiskLocation,
    access: VcenterAccess,
    identity: str = "vigil",
    thumbprint: str | None = None,
) -> None:
    """VixDiskLib_PrepareForAccess: vCenter disables Storage vMotion of the VM until
    EndAccess (VDDK guide: call it before opening the disks of a backup or restore, and
    EndAccess after closing them). A no-op on VDDKs without it."""
    _access_call(lib, "VixDiskLib_PrepareForAccess", location, access, identity, thumbprint)


def end_access(
    lib: VddkLibrary,
    location: DiskLocation,
    access: VcenterAccess,
    identity: str = "vigil",
    thumbprint: str | None = None,
) -> None:
    _access_call(lib, "VixDiskLib_EndAccess", location, access, identity, thumbprint)


def _access_call(
    lib: VddkLibrary,
    name: str,
    location: DiskLocation,
    access: VcenterAccess,
    identity: str,
    thumbprint: str | None,
) -> None:
    if not lib.has(name):
        return
    params = ConnectParams(lib, location, access, thumbprint)
    try:
        err = lib.run(lambda: lib.fn(name)(params.ptr, identity.encode()))
        lib.check(err, f"{name} {location.vm_moref}")
    finally:
        params.free()


def cleanup(
    lib: VddkLibrary,
    location: DiskLocation,
    access: VcenterAccess,
    thumbprint: str | None = None,
) -> tuple[int, int]:
    """VixDiskLib_Cleanup after a crash (what an interrupted run left behind, such as HotAdd
    disks still attached to the proxy VM): (VMs cleaned up, VMs still needing it)."""
    if not lib.has("VixDiskLib_Cleanup"):
        return 0, 0
    params = ConnectParams(lib, location, access, thumbprint)
    done, left = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    try:
        err = lib.run(lambda: lib.fn("VixDiskLib_Cleanup")(params.ptr, done, left))
        lib.check(err, f"VixDiskLib_Cleanup {location.vm_moref}")
    finally:
        params.free()
    return int(done[0]), int(left[0])
