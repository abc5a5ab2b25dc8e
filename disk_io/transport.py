"""The one small interface every transport implements, and the per-disk opener.

`open_disk` tries the configured modes in order and records which one served the disk
and why the others did not; a transport that is unavailable or fails to open is skipped —
except for a TLS pin mismatch, which fails at once: another transport would talk to the
same impostor. A VDDK failure is a warning carrying the library's own text
(VixDiskLib_GetErrorText).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

from .errors import DiskIoError, DiskOpenError, ThumbprintMismatch, VddkError
from .model import DiskLocation, Extent, VcenterAccess

log = structlog.get_logger(__name__)

MODES = ("vddk", "http", "file")
# VDDK's own transport modes, for `[transport.vddk] modes = "hotadd:nbdssl:nbd"` (the
# transportModes argument of VixDiskLib_ConnectEx). nbdkit's vddk plugin lists "nbd, nbdssl,
# san, hotadd, file (there may be others)", so only the shape is checked, never the names.
VDDK_MODES = ("file", "san", "hotadd", "nbdssl", "nbd")
_VDDK_MODES_SHAPE = re.compile(r"[a-z]+(:[a-z]+)*")


def check_vddk_modes(value: object, key: str = "transport.vddk.modes") -> str:
    """The validated transportModes string, or ValueError naming the key."""
    if not isinstance(value, str) or not _VDDK_MODES_SHAPE.fullmatch(value):
        raise ValueError(
            f"{key}: must be VDDK transport modes joined by ':', e.g. "
            f'"hotadd:nbdssl:nbd" (known: {", ".join(VDDK_MODES)}), got {value!r}'
        )
    return value


@runtime_checkable
class DiskTransport(Protocol):
    """A disk opened for reading (or writing). Blocking: call it from worker threads."""

    capacity: int  # bytes
    transport: str  # "vddk" | "http" | "file"
    transport_mode: str  # what served it inside the transport: VDDK's "nbdssl", "hotadd"...

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """Exactly `length` bytes at `offset` (a bytes-like object the caller owns)."""
        ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def allocated_extents(self) -> list[Extent] | None:
        """Allocated byte ranges, or None when the transport cannot tell."""
        ...

    def metadata(self) -> dict[str, str]:
        """The disk's metadata keys (VDDK's GetMetadataKeys; the descriptor's ddb.* entries)."""
        ...

    def write_metadata(self, values: dict[str, str]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TransportSettings:
    """`[transport]` of the configuration, as disk_io needs it."""

    modes: tuple[str, ...] = MODES
    vddk_libdir: str = "/opt/vmware-vix-disklib-distrib"
    file_datastores: Mapping[str, str] = field(default_factory=dict)
    vddk_transport_modes: str | None = None  # e.g. "hotadd:nbdssl"; None = VDDK's default
    vddk_thumbprint: str = "auto"  # "auto" (SHA-1: VDDK 6.5-9.x) | "sha1" | "sha256"
    http_connections: int = 4


@dataclass(frozen=True)
class OpenAttempt:
    mode: str
    ok: bool
    reason: str = ""
    seconds: float = 0.0


@dataclass
class OpenedDisk:
    """The open disk plus the record of how it was chosen."""

    disk: DiskTransport
    attempts: list[OpenAttempt]

    @property
    def transport(self) -> str:
        return self.disk.transport

    def summary(self) -> str:
        return "; ".join(f"{a.mode}: {'used' if a.ok else a.reason}" for a in self.attempts)


Opener = Callable[[DiskLocation, VcenterAccess | None, TransportSettings, bool], DiskTransport]


def _open_vddk(
    loc: DiskLocation, access: VcenterAccess | None, s: TransportSettings, writable: bool
) -> DiskTransport:
    from .vddk.connect import open_vddk

    if access is None:
        raise DiskIoError("the vddk transport needs vCenter access (session cookie)")
    return open_vddk(
        loc,
        access,
        libdir=s.vddk_libdir,
        writable=writable,
        modes=s.vddk_transport_modes,
        thumbprint_override=s.vddk_thumbprint,
    )


def _open_http(
    loc: DiskLocation, access: VcenterAccess | None, s: TransportSettings, writable: bool
) -> DiskTransport:
    from .httpdisk import HttpDisk

    if access is None:
        raise DiskIoError("the http transport needs vCenter access (session cookie)")
    return HttpDisk(loc, access, writable=writable, connections=s.http_connections)


def _open_file(
    loc: DiskLocation, access: VcenterAccess | None, s: TransportSettings, writable: bool
) -> DiskTransport:
    from .filedisk import open_file_disk

    return open_file_disk(loc, s.file_datastores, writable=writable)


_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()


def _first_report(mode: str, reason: str) -> bool:
    with _reported_lock:
        if (mode, reason) in _reported:
            return False
        _reported.add((mode, reason))
        return True


def forget_reported() -> None:
    """Log the next skip of every mode again (tests; a reload that changed the settings)."""
    with _reported_lock:
        _reported.clear()


OPENERS: dict[str, Opener] = {"vddk": _open_vddk, "http": _open_http, "file": _open_file}


def open_disk(
    location: DiskLocation,
    access: VcenterAccess | None,
    settings: TransportSettings,
    *,
    writable: bool = False,
    modes: Sequence[str] | None = None,
) -> OpenedDisk:
    """Open the disk with the first mode that works (blocking: run it in the I/O pool).

    Writing a thin disk, the http transport goes last: its one streamed PUT writes every
    byte, zeros too, and leaves the disk fully allocated, while vddk and file write only
    the chunks that hold data."""
    order = tuple(modes) if modes is not None else settings.modes
    thin_write = writable and location.provisioning == "thin"
    if thin_write and "http" in order:
        order = (*[m for m in order if m != "http"], "http")
    attempts: list[OpenAttempt] = []
    for mode in order:
        opener = OPENERS.get(mode)
        if opener is None:
            raise ValueError(f"transport.modes: unknown mode {mode!r} (known: {', '.join(MODES)})")
        started = time.monotonic()
        try:
            disk = opener(location, access, settings, writable)
        except ThumbprintMismatch:
            raise  # never fall back: the next transport would reach the same server
        except (DiskIoError, OSError) as exc:
            took = time.monotonic() - started
            attempts.append(OpenAttempt(mode, False, str(exc), took))
            if isinstance(exc, VddkError):
                log.warning(
                    "transport.vddk_failed",
                    disk=str(location),
                    operation=exc.operation,
                    code=exc.code,
                    error=exc.text,
                )
            # A mode unusable for every disk (no VDDK installed) is said once per process;
            # each disk's attempts still carry the reason.
            elif _first_report(mode, str(exc)):
                log.info(
                    "transport.skipped",
                    disk=str(location),
                    mode=mode,
                    reason=str(exc),
                    note="said once per process for the same reason",
                )
            else:
                log.debug("transport.skipped", disk=str(location), mode=mode)
            continue
        attempts.append(OpenAttempt(mode, True, "", time.monotonic() - started))
        if disk.capacity != location.capacity_bytes:
            log.warning(
                "transport.capacity_differs",
                disk=str(location),
                mode=mode,
                reported=disk.capacity,
                expected=location.capacity_bytes,
            )
        log.info("transport.opened", disk=str(location), mode=mode, writable=writable)
        if thin_write and not getattr(disk, "keeps_thin", True):
            log.warning(
                "transport.thin_disk_written_in_full",
                disk=str(location),
                mode=mode,
                why="the http transport uploads the whole flat file, zeros included, so the "
                "thin disk becomes fully allocated; vddk keeps it thin",
            )
        return OpenedDisk(disk, attempts)
    raise DiskOpenError(str(location), [(a.mode, a.reason) for a in attempts])


class _NoAccess:
    prepared = False

    def end(self) -> None:
        return None


def vm_access(
    vm_moref: str,
    access: VcenterAccess | None,
    settings: TransportSettings,
    modes: Sequence[str] | None = None,
) -> Any:
    """Before a backup's or restore's first disk open: VixDiskLib_PrepareForAccess (vCenter
    then refuses to Storage-vMotion the VM); call `.end()` after the last close. A no-op
    object when vddk is not among the modes. Blocking: run it in the I/O pool."""
    order = tuple(modes) if modes is not None else settings.modes
    if "vddk" not in order or access is None or not vm_moref:
        return _NoAccess()
    from .vddk.connect import VmAccess

    return VmAccess(
        vm_moref, access, libdir=settings.vddk_libdir, thumbprint_override=settings.vddk_thumbprint
    )
