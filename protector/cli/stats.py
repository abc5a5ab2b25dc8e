"""`vigil stats`: repository size, dedup and compression ratios, per-VM growth."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from protector.cli.common import clean, config_of, json_option, open_repository, print_json
from protector.cli.progress import human_bytes

KINDS = ("chunks", "indexes", "manifests", "tombstones", "pins")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stats",
        help="repository size, dedup ratio and how fast each VM's backups grow",
        description="Read every restore point's index and report what the repository holds: "
        "its size by object kind, the logical bytes the points represent, the unique data "
        "they share, the dedup and compression ratios, and per VM the points, the newest "
        "point's size and the new data its points added in the last 7 and 30 days. Reads "
        "indexes only (no chunk data). Needs no vCenter.",
        epilog="Examples:\n\n"
        "  vigil stats\n"
        "  vigil stats --json | jq '.vm_stats[:5]'     # the five fastest-growing VMs",
    )
    json_option(p, "print the figures as JSON (bytes as integers, ratios as numbers)")
    p.set_defaults(handler=run)


def gather(repo: Any) -> dict[str, Any]:
    """The I/O half: manifests, their indexes (each loaded once), object sizes."""
    from protector.stats import PointChunks, compute

    objects = {}
    for kind in KINDS:
        infos = list(repo.backend.list(f"{kind}/"))
        objects[kind] = (len(infos), sum(i.size for i in infos))
    cache: dict[str, tuple[dict[bytes, int], int]] = {}
    points = []
    for m in repo.manifests():
        chunks: dict[bytes, int] = {}
        logical = 0
        for d in m.disks:
            if d.index_id not in cache:
                cache[d.index_id] = _index_chunks(repo, d.index_id, d.capacity)
            index_chunks, index_logical = cache[d.index_id]
            chunks.update(index_chunks)
            logical += index_logical
        points.append(PointChunks(m.point_id, m.vm, m.seq, m.committed_at, chunks, logical))
    return compute(points, objects, datetime.now(UTC), pinned=len(repo.pinned_points()))


def _index_chunks(repo: Any, index_id: str, capacity: int) -> tuple[dict[bytes, int], int]:
    """(chunk id -> length, non-hole bytes) of one disk index (its disk's capacity bounds
    what the index may inflate to)."""
    from repository.codec import ZERO_ID

    idx = repo.load_index(index_id, capacity)
    chunks: dict[bytes, int] = {}
    logical = 0
    for slot, cid in enumerate(idx.ids):
        if cid != ZERO_ID:
            n = idx.slot_length(slot)
            chunks[cid] = n
            logical += n
    return chunks, logical


def _ratio(r: float | None) -> str:
    return f"{r:.2f}x" if r is not None else "-"


def render(s: dict[str, Any]) -> str:
    lines = [
        f"repository: {human_bytes(s['repository']['size_bytes'])} in "
        + ", ".join(
            f"{o['count']} {k}" for k, o in s["repository"]["objects"].items() if o["count"]
        ),
        f"{s['points']} restore points of {s['vms']} VMs ({s['pinned']} pinned)",
        f"logical {human_bytes(s['logical_bytes'])}, unique {human_bytes(s['unique_bytes'])}, "
        f"stored {human_bytes(s['stored_chunk_bytes'])}: dedup {_ratio(s['dedup_ratio'])}, "
        f"compression {_ratio(s['compression_ratio'])}, total {_ratio(s['total_ratio'])}",
    ]
    if s["vm_stats"]:
        width = max(len(v["vm"]["path"] or v["vm"]["name"]) for v in s["vm_stats"])
        width = max(width, 2)
        lines.append(
            f"{'VM':<{width}}  {'POINTS':>6}  {'NEWEST':>10}  {'UNIQUE':>10}  {'+7 DAYS':>10}  "
            f"{'PER DAY':>10}"
        )
        for v in s["vm_stats"]:
            lines.append(
                f"{clean(v['vm']['path'] or v['vm']['name']):<{width}}  {v['points']:>6}  "
                f"{human_bytes(v['newest_point_bytes']):>10}  "
                f"{human_bytes(v['unique_bytes']):>10}  "
                f"{human_bytes(v['added_last_7d_bytes']):>10}  "
                f"{human_bytes(v['growth_per_day_bytes']):>10}"
            )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    import anyio

    repo = await open_repository(config_of(args))
    with repo.reading():  # a prune sweep does not pull indexes from under us
        stats = await anyio.to_thread.run_sync(gather, repo)
    stats["repository"]["path"] = str(repo.root)
    if args.json:
        print_json(stats)
    else:
        print(render(stats))
    return 0
