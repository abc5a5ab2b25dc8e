"""Read-back verification: re-read a written disk and compare each chunk's keyed hash with
the restore point's; the admin's message names where they differ."""

from __future__ import annotations

from typing import Any

import structlog

from protector.context import Context
from protector.parallel import in_thread_shielded, map_bounded
from protector.vsphere.vmconfig import DiskInfo
from repository.codec import ZERO_ID, object_id

log = structlog.get_logger(__name__)


def verify_failure(point_id: str, key: str, disk: DiskInfo, index: Any, bad: list[int]) -> str:
    """The admin's message for a disk that does not read back as the point: where it differs."""
    shown = ", ".join(
        f"chunk {s} (bytes {s * index.chunk_size}+{index.slot_length(s)})" for s in bad[:5]
    )
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"verification failed: disk {disk.file_name} does not read back as restore point "
        f"{point_id} disk {key}: {len(bad)} of {len(index.ids)} chunks differ ({shown}{more}); "
        "the datastore did not keep what was written — check it, then restore again"
    )


async def verify_disk(ctx: Context, vm: Any, disk: DiskInfo, index: Any) -> list[int]:
    """Re-read the written disk and compare each chunk's hash (the repository's keyed chunk
    id) with the one the restore point holds; returns the slots that differ. Hashing what
    was read needs no chunk from the repository, so this checks the disk, not the repo."""
    from protector.vsphere.disks import open_disk_for_read

    reader = await open_disk_for_read(ctx, vm, None, disk, None)
    keys = ctx.repo.keys
    try:

        def same(slot: int) -> bool:
            length = index.slot_length(slot)
            got = reader.read(slot * index.chunk_size, length)
            if len(got) != length:
                return False
            if index.ids[slot] == ZERO_ID:
                return got == bytes(length)
            return object_id(keys, got) == index.ids[slot]

        bad: list[int] = []

        def check(slot: int, ok: bool) -> None:
            if not ok:
                bad.append(slot)

        await map_bounded(
            same,
            range(len(index.ids)),
            workers=ctx.io_threads,
            limiter=ctx.io_limiter,
            on_result=check,
        )
        bad.sort()
        for slot in bad[:10]:
            log.error("restore.verify_mismatch", disk=disk.file_name, slot=slot)
        return bad
    finally:
        await in_thread_shielded(reader.close)
