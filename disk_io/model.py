"""Plain data describing a disk and how to reach vCenter; shared by all transports."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

SECTOR = 512

_DELTA = re.compile(r"-\d{6}\.vmdk$")


class Extent(NamedTuple):
    """A byte range of a disk: [start, start + length)."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class DiskLocation:
    """Where a virtual disk lives, as vCenter names it."""

    datacenter_path: str  # inventory path of the datacenter, e.g. "DC0" or "folder/DC0"
    datastore: str  # datastore name, e.g. "LocalDS_0"
    path: str  # datastore-relative descriptor path, e.g. "vm1/vm1.vmdk"
    capacity_bytes: int
    vm_moref: str = ""  # "vm-42"
    snapshot_moref: str | None = None  # "snapshot-7" when reading a snapshot
    disk_key: int = 0
    flat_path: str | None = None  # override for the flat extent (http/file transports)
    provisioning: str = ""  # "thin" | "lazy-zeroed-thick" | "eager-zeroed-thick" | "" unknown

    @property
    def vmdk_path(self) -> str:
        """The "[datastore] dir/name.vmdk" form VixDiskLib_Open takes."""
        return f"[{self.datastore}] {self.path}"

    def flat_extent_path(self) -> str:
        """The datastore-relative path of the flat extent holding the disk's bytes."""
        if self.flat_path:
            return self.flat_path
        if not self.path.endswith(".vmdk"):
            raise ValueError(f"disk {self.vmdk_path}: descriptor path must end in .vmdk")
        if self.path.endswith("-flat.vmdk"):
            return self.path
        if _DELTA.search(self.path):
            # A -NNNNNN.vmdk is a snapshot delta in sparse format: only VDDK can read it.
            raise ValueError(
                f"disk {self.vmdk_path} is a snapshot delta; the http and file transports read "
                "flat extents only (set DiskLocation.flat_path to the base flat extent when the "
                "chain has one level)"
            )
        return self.path[: -len(".vmdk")] + "-flat.vmdk"

    def __str__(self) -> str:
        return self.vmdk_path


@dataclass(frozen=True)
class VcenterAccess:
    """How the http and vddk transports reach vCenter with our existing SOAP session."""

    url: str  # the SDK URL, e.g. "https://vc.example.com/sdk"
    session_cookie: str = field(repr=False)  # vmware_soap_session value (or the whole cookie)
    user: str = ""
    thumbprint: str = ""  # "AB:CD:..." SHA-256 of the server certificate (pinned or verified)
    verify: bool = True
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme or "https"

    def cookie_value(self) -> str:
        """The bare cookie value, whether given bare or as a Set-Cookie style string."""
        raw = self.session_cookie.strip()
        if raw.startswith("vmware_soap_session="):
            raw = raw.split(";", 1)[0].split("=", 1)[1]
        return raw
