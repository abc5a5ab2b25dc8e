"""The errors the vSphere client raises: one base, faults from vCenter, and transport
failures (unreachable, timed out, not SOAP, TLS pin mismatch)."""

from __future__ import annotations

from typing import Any

import aiohttp


class VsphereError(Exception):
    """Base for everything this client raises."""


class VsphereFault(VsphereError):
    """A SOAP fault from vCenter, carrying the vSphere fault type name."""

    def __init__(self, fault_type: str, message: str, fault: Any = None, method: str = ""):
        self.fault_type = fault_type
        self.message = message
        self.fault = fault
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{fault_type}: {message}" if message else f"{where}{fault_type}")


class VsphereConnectionError(VsphereError):
    """vCenter could not be reached, or the connection broke."""


class VsphereTimeout(VsphereConnectionError):
    """vCenter did not answer in time."""


class VsphereProtocolError(VsphereError):
    """vCenter (or something in between) answered with something that is not SOAP."""


class TlsPinError(VsphereConnectionError):
    """The server's certificate does not match the pinned thumbprint."""

    @classmethod
    def mismatch(
        cls, host: str, expected: str, exc: aiohttp.ServerFingerprintMismatch
    ) -> TlsPinError:
        return cls(
            f"TLS certificate of {host} does not match the pinned thumbprint: "
            f"expected {expected}, got {':'.join(f'{b:02X}' for b in exc.got)}; "
            "if the certificate was replaced on purpose, update vcenter.thumbprint"
        )
