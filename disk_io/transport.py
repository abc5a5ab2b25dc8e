"""The one small interface every transport implements, and the per-disk opener.

`open_disk` tries the configured modes in order and records which one served the disk
and why the others did not; a transport that is unavailable or fails to open is skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import structlog

from .errors import DiskIoError, DiskOpenError
from .model import DiskLocation, Extent, VcenterAccess

log = structlog.get_logger(__name__)

MODES = ("vddk", "http", "file")


@runtime_checkable
class DiskTransport(Protocol):
    """A disk opened for reading (or writing). Blocking: call it from worker threads."""

    capacity: int  # bytes
    transport: str  # "vddk" | "http" | "file"

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
    from .vddk import VddkDisk, get_library

    if access is None:
        raise DiskIoError("the vddk transport needs vCenter access (session cookie)")
    return VddkDisk(
        get_library(s.vddk_libdir),
        loc,
        access,
        writable=writable,
        transport_modes=s.vddk_transport_modes,
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
    """Open the disk with the first mode that works (blocking: run it in the I/O pool)."""
    order = tuple(modes) if modes is not None else settings.modes
    attempts: list[OpenAttempt] = []
    for mode in order:
        opener = OPENERS.get(mode)
        if opener is None:
            raise ValueError(f"transport.modes: unknown mode {mode!r} (known: {', '.join(MODES)})")
        started = time.monotonic()
        try:
            disk = opener(location, access, settings, writable)
        except (DiskIoError, OSError) as exc:
            took = time.monotonic() - started
            attempts.append(OpenAttempt(mode, False, str(exc), took))
            # A mode unusable for every disk (no VDDK installed) is said once per process;
            # each disk's attempts still carry the reason.
            if _first_report(mode, str(exc)):
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
        return OpenedDisk(disk, attempts)
    raise DiskOpenError(str(location), [(a.mode, a.reason) for a in attempts])
