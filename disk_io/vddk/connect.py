"""Reaching vCenter through VDDK the way the reference clients do (docs/vddk.md).

- The certificate is verified first (vigil's SHA-256 pin or the CA, as for the http
  transport) and only its fingerprint in the library's format goes to VDDK
  (thumbprint.py); a pin mismatch raises ThumbprintMismatch, which fails the job.
- VixDiskLib_Cleanup runs once per process and server before the first connection, so a
  crashed run's leftovers (HotAdd disks still on the proxy VM) are cleaned up (vixDiskLib.h:
  it reports the virtual machines "successfully cleaned up" and those that "still require
  cleaning up"; the VDDK guide: "for safety add a VixDiskLib_Cleanup() call").
- PrepareForAccess / EndAccess bracket a backup's or restore's disk access.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from ..errors import DiskIoError, VddkError
from ..model import DiskLocation, VcenterAccess
from ..tls import server_certificate
from .disk import VddkDisk, cleanup, end_access, prepare_for_access
from .library import VddkLibrary, get_library
from .thumbprint import thumbprint_hash, vddk_thumbprint

log = structlog.get_logger(__name__)

IDENTITY = "vigil"  # PrepareForAccess's identity: "a string identifying the application"

_cleaned: set[tuple[str, int]] = set()
_cleaned_lock = threading.Lock()


def library_thumbprint(lib: VddkLibrary, access: VcenterAccess, override: str = "auto") -> str:
    """vCenter's certificate, verified, as the fingerprint this library takes; "" over
    plain http (no certificate)."""
    der = server_certificate(access)
    if der is None:
        return ""
    return vddk_thumbprint(der, thumbprint_hash(lib.major, override))


def _vm(vm_moref: str) -> DiskLocation:
    return DiskLocation("", "", "", 0, vm_moref)


def cleanup_once(lib: VddkLibrary, vm_moref: str, access: VcenterAccess, thumbprint: str) -> None:
    key = (access.host, access.port)
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    try:
        done, left = cleanup(lib, _vm(vm_moref), access, thumbprint or None)
    except VddkError as exc:
        log.warning("vddk.cleanup_failed", server=access.host, error=str(exc))
        return
    report = log.warning if left else log.info
    report("vddk.cleanup", server=access.host, cleaned_up=done, remaining=left)


def open_vddk(
    location: DiskLocation,
    access: VcenterAccess,
    *,
    libdir: str,
    writable: bool,
    modes: str | None,
    thumbprint_override: str = "auto",
) -> VddkDisk:
    lib = get_library(libdir)
    thumb = library_thumbprint(lib, access, thumbprint_override)
    cleanup_once(lib, location.vm_moref, access, thumb)
    return VddkDisk(
        lib, location, access, writable=writable, transport_modes=modes, thumbprint=thumb or None
    )


class VmAccess:
    """PrepareForAccess now, EndAccess on `end()` (idempotent). Blocking: call both from a
    worker thread. A library that cannot be loaded makes both no-ops: the transports after
    vddk still work, and vddk itself then reports why it could not open a disk."""

    def __init__(
        self,
        vm_moref: str,
        access: VcenterAccess,
        *,
        libdir: str,
        thumbprint_override: str = "auto",
    ) -> None:
        self.vm_moref = vm_moref
        self.access = access
        self._lib: VddkLibrary | None = None
        self._thumb = ""
        self.prepared = False
        try:
            lib = get_library(libdir)
        except DiskIoError as exc:
            log.debug("vddk.prepare_skipped", vm=vm_moref, reason=str(exc))
            return
        self._lib = lib
        self._thumb = library_thumbprint(lib, access, thumbprint_override)
        cleanup_once(lib, vm_moref, access, self._thumb)
        try:
            prepare_for_access(lib, _vm(vm_moref), access, IDENTITY, self._thumb or None)
        except VddkError as exc:
            # Storage vMotion stays possible meanwhile; the backup itself can go on.
            log.warning("vddk.prepare_for_access_failed", vm=vm_moref, error=str(exc))
            return
        self.prepared = True

    def end(self) -> None:
        lib, self._lib = self._lib, None
        if lib is None or not self.prepared:
            return
        try:
            end_access(lib, _vm(self.vm_moref), self.access, IDENTITY, self._thumb or None)
        except VddkError as exc:
            log.warning("vddk.end_access_failed", vm=self.vm_moref, error=str(exc))

    def __enter__(self) -> VmAccess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end()
