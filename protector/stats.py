"""`vigil stats`: what the repository holds and how well it deduplicates. Pure: the CLI
gathers the points' chunk lists and the object sizes; everything here is arithmetic.

Terms (the ones restic's and Proxmox's stats use):
  - logical: the bytes every point would restore, holes (all-zero chunks) excluded;
  - unique: the distinct chunks those bytes are made of, uncompressed;
  - stored: the chunk objects on disk (compressed, encrypted, with headers).
dedup ratio = logical / unique; compression ratio = unique / stored.
A VM's growth is the unique data each of its points added to the VM's earlier points,
summed over the last 7 and 30 days (what its daily change costs the repository)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from repository import VmIdentity


@dataclass(frozen=True, slots=True)
class PointChunks:
    point_id: str
    vm: VmIdentity
    seq: int
    committed_at: datetime
    chunks: Mapping[bytes, int]  # chunk id -> length, all-zero chunks left out
    logical: int  # the point's non-hole bytes (a chunk used twice counts twice)


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 2) if b else None


def compute(
    points: Sequence[PointChunks],
    objects: Mapping[str, tuple[int, int]],
    now: datetime,
    pinned: int = 0,
) -> dict[str, Any]:
    """`objects`: kind ("chunks", "indexes", ...) -> (count, bytes) as stored."""
    unique: dict[bytes, int] = {}
    for p in points:
        unique.update(p.chunks)
    logical = sum(p.logical for p in points)
    unique_bytes = sum(unique.values())
    stored = objects.get("chunks", (0, 0))[1]
    by_vm: dict[str, list[PointChunks]] = {}
    for p in points:
        by_vm.setdefault(p.vm.key, []).append(p)
    vms = [_vm_stats(sorted(ps, key=lambda p: p.seq), now) for ps in by_vm.values()]
    vms.sort(key=lambda v: (-v["added_last_7d_bytes"], v["vm"]["path"] or v["vm"]["name"]))
    return {
        "repository": {
            "size_bytes": sum(b for _c, b in objects.values()),
            "objects": {k: {"count": c, "bytes": b} for k, (c, b) in sorted(objects.items())},
        },
        "points": len(points),
        "vms": len(by_vm),
        "pinned": pinned,
        "logical_bytes": logical,
        "unique_bytes": unique_bytes,
        "stored_chunk_bytes": stored,
        "dedup_ratio": _ratio(logical, unique_bytes),
        "compression_ratio": _ratio(unique_bytes, stored),
        "total_ratio": _ratio(logical, stored),
        "vm_stats": vms,
    }


def _vm_stats(points: list[PointChunks], now: datetime) -> dict[str, Any]:
    seen: set[bytes] = set()
    added: list[tuple[datetime, int]] = []
    for p in points:
        new = sum(n for cid, n in p.chunks.items() if cid not in seen)
        seen.update(p.chunks)
        added.append((p.committed_at, new))
    week = sum(n for at, n in added if at >= now - timedelta(days=7))
    month = sum(n for at, n in added if at >= now - timedelta(days=30))
    unique = {cid: n for p in points for cid, n in p.chunks.items()}
    newest = points[-1]
    vm = newest.vm
    return {
        "vm": {"name": vm.name, "path": vm.path, "instance_uuid": vm.instance_uuid},
        "points": len(points),
        "oldest": points[0].committed_at.isoformat().replace("+00:00", "Z"),
        "newest": newest.committed_at.isoformat().replace("+00:00", "Z"),
        "newest_point_bytes": newest.logical,
        "unique_bytes": sum(unique.values()),
        "added_last_7d_bytes": week,
        "added_last_30d_bytes": month,
        "growth_per_day_bytes": week // 7,
    }
