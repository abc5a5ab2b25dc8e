"""Disk metadata from a VMDK text descriptor's `ddb.*` lines (pure).

VixDiskLib_GetMetadataKeys reports these same entries without the `ddb.` prefix, so the
http and file transports can offer the metadata VDDK would.
"""

from __future__ import annotations

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
