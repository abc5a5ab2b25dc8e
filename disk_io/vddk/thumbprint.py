"""The certificate thumbprint VixDiskLib wants, by library version (pure; docs/vddk.md).

VDDK trusts vCenter's and the ESXi hosts' certificates by thumbprint only
(`VixDiskLibConnectParams.thumbPrint`). The reference clients hand it the SHA-1
fingerprint as 20 colon-separated hex pairs: nbdkit's vddk plugin documents
"thumbprint=... The SSL (SHA1) thumbprint ... xx:xx:...:xx (20 hex digit pairs)" for the
VDDK 6.5-8.x libraries it loads (libvixDiskLib.so.6/7/8), and tells users whose Open fails
with "Unknown error" to "verify whether the thumbprint matches the SHA1 fingerprint"
(RHBZ#1905772). vSphere is moving to SHA-256 thumbprints (govmomi #3384, pyVmomi #920,
`VirtualMachineCertThumbprint.hashAlgorithm` "sha256" since API 7.0.3.1), and we hand the
SHA-256 form to libraries from major 9 on. That boundary is our reading, not a sentence
from VMware's release notes (none we could reach names the version): it is one constant
here, and `[transport.vddk] thumbprint = "sha1" | "sha256"` overrides it.

vigil's own pin (`vcenter.thumbprint`) is always the full SHA-256: the certificate is
verified against it (or against the CA) first, and only then is its fingerprint in the
library's format computed from the same DER bytes.
"""

from __future__ import annotations

import hashlib
from typing import Literal

HashName = Literal["sha1", "sha256"]

SHA256_FROM_MAJOR = 9  # first libvixDiskLib major handed a SHA-256 thumbprint
CHOICES = ("auto", "sha1", "sha256")


def thumbprint_hash(major: int, override: str = "auto") -> HashName:
    """Which fingerprint this library version takes; `override` is the config value."""
    if override == "sha1":
        return "sha1"
    if override == "sha256":
        return "sha256"
    if override != "auto":
        raise ValueError(
            f"transport.vddk.thumbprint: must be one of {', '.join(CHOICES)}, got {override!r}"
        )
    return "sha256" if major >= SHA256_FROM_MAJOR else "sha1"


def vddk_thumbprint(der: bytes, hash_name: HashName) -> str:
    """`AB:CD:...` of the DER certificate: 20 pairs for SHA-1, 32 for SHA-256."""
    if hash_name == "sha1":
        digest = hashlib.sha1(der, usedforsecurity=False).digest()  # the format, not our pin
    else:
        digest = hashlib.sha256(der).digest()
    return ":".join(f"{b:02X}" for b in digest)
