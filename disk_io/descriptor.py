"""Disk metadata from a VMDK text descriptor's `ddb.*` lines, and its extents (pure).

VixDiskLib_GetMetadataKeys reports these same entries without the `ddb.` prefix, so the
http and file transports can offer the metadata VDDK would. The extent lines
(`RW 2048 VMFS "x-flat.vmdk"`) say whether a flat file holds the data at all: on vSAN
the extent is a `vsan://` object and on vVols a `vvol://` one, which the datastore
browser (/folder) cannot serve.
"""

from __future__ import annotations

import re

_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)(?:\s+"([^"]*)")?', re.MULTILINE)

MAX_DESCRIPTOR = 64 * 1024  # a text descriptor is small; a larger file is a binary extent


def parse_ddb(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("ddb.") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[key.strip()[4:]] = value
    return out


def parse_descriptor_bytes(data: bytes) -> dict[str, str]:
    if len(data) > MAX_DESCRIPTOR or b"\x00" in data[:4096]:
        return {}
    return parse_ddb(data.decode("utf-8", "replace"))


def parse_extents(data: bytes) -> list[tuple[str, str]]:
    """(type, file) of each extent line: ("VMFS", "x-flat.vmdk"), ("VSANSPARSE", "vsan://...")."""
    if len(data) > MAX_DESCRIPTOR or b"\x00" in data[:4096]:
        return []
    text = data.decode("utf-8", "replace")
    return [(m.group(2), m.group(3) or "") for m in _EXTENT.finditer(text)]


def no_flat_reason(extents: list[tuple[str, str]]) -> str:
    """Why these extents have no flat file the http transport could read ("" when they
    may have one)."""
    for kind, file in extents:
        lowered = file.lower()
        if lowered.startswith("vsan://") or kind.upper().startswith("VSAN"):
            return f"its extent is a vSAN object ({file or kind})"
        if lowered.startswith("vvol://") or kind.upper().startswith("VVOL"):
            return f"its extent is a vVol ({file or kind})"
    return ""
