"""Exceptions of the data plane; every one names the disk, file or key at fault."""

from __future__ import annotations


class DiskIoError(Exception):
    """Base class for disk_io failures."""


class TransportUnavailable(DiskIoError):
    """A transport cannot serve this disk at all (not configured, library missing, ...)."""


class InvalidChangedAreas(DiskIoError, ValueError):
    """vCenter answered QueryChangedDiskAreas with something we cannot trust."""


class ThumbprintMismatch(DiskIoError):
    """The server's certificate does not match the pinned thumbprint."""


class VddkError(DiskIoError):
    """A VixDiskLib call failed: `code` is `VixError & 0xFFFF`, `text` the library's message."""

    def __init__(self, code: int, text: str, operation: str = "", raw: int | None = None) -> None:
        self.code = code
        self.text = text
        self.operation = operation
        self.raw = code if raw is None else raw
        where = f"{operation}: " if operation else ""
        super().__init__(f"{where}VixDiskLib error {code}: {text}")


class VddkUnavailable(TransportUnavailable):
    """libvixDiskLib could not be loaded."""

    def __init__(self, tried: list[str], config_key: str = "transport.vddk_libdir") -> None:
        self.tried = tried
        self.config_key = config_key
        listing = ", ".join(tried) if tried else "(no candidate paths)"
        super().__init__(
            f"VixDiskLib not found (tried {listing}); install the VDDK and set {config_key} "
            "to its distribution directory"
        )


class UntrustedLibrary(TransportUnavailable):
    """libvixDiskLib (or its directory) is owned or writable by another user: loading it
    would run their code in this process (as root, often)."""


class DiskOpenError(DiskIoError):
    """No configured transport could open the disk; `attempts` says why each failed."""

    def __init__(self, disk: str, attempts: list[tuple[str, str]]) -> None:
        self.disk = disk
        self.attempts = attempts
        why = "; ".join(f"{mode}: {reason}" for mode, reason in attempts) or "no modes configured"
        super().__init__(f"cannot open disk {disk}: {why}")
