"""Writing one saved disk onto a VM's disk: metadata first (a new disk only), chunks fetched
in parallel and written in ascending offsets, zero chunks skipped on a fresh disk,
optionally only some slots (changed_only), then the read-back check (verify)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio

from protector.context import Context
from protector.errors import UserError
from protector.parallel import in_thread_shielded, map_ordered
from protector.restore.result import Progress, RestoredDisk
from protector.restore.verify import verify_disk, verify_failure
from protector.vsphere.disks import open_disk_for_write
from protector.vsphere.vmconfig import DiskInfo
from repository import Manifest
from repository.codec import ZERO_ID

# Metadata keys that identify one disk, not describe it: `uuid` is the disk's UUID (the
# descriptor's ddb.uuid, surfaced as VirtualDiskFlatVer2BackingInfo.uuid, which vSphere and
# backup products use to tell disks apart) and `longContentID` changes with every write;
# copied onto a new disk they would make two disks look like one.
IDENTITY_KEYS = frozenset({"uuid", "longContentID", "CID", "parentCID"})


def metadata_to_write(metadata: dict[str, str] | None, fresh: bool) -> dict[str, str]:
    """The saved metadata keys a restore writes: only onto a disk it just created — the
    seed: "you must use a VixDiskLib function to set the disk configuration key/value data
    into the virtual disk before writing any backed-up data" when creating a new VM, while
    for an existing one "it is not necessary to restore the disk configuration
    information" — and never the identity keys. Pure."""
    if not fresh or not metadata:
        return {}
    return {k: v for k, v in metadata.items() if k not in IDENTITY_KEYS}


@contextlib.asynccontextmanager
async def _reading(repo: Any) -> AsyncIterator[None]:
    """repo.reading() (the shared repository lock), taken in a worker thread: it may wait
    for a running prune sweep."""
    cm = repo.reading()
    await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


async def write_disk(
    ctx: Context,
    manifest: Manifest,
    key: str,
    vm: Any,
    disk: DiskInfo,
    *,
    fresh: bool,
    verify: bool,
    progress: Progress | None,
    done: list[int],
    total: int,
    only_slots: list[int] | None = None,
    modes: tuple[str, ...] | None = None,
) -> RestoredDisk:
    """Write a saved disk onto `disk`. A fresh disk reads as zeros, so zero chunks are skipped;
    an existing one gets zeros written where the point has them. `only_slots` limits the
    writes to those chunk slots (an incremental restore)."""
    # Shared repository lock for the whole write: a prune sweep then cannot remove chunks
    # of this point, should the point be deleted while it is being restored.
    async with _reading(ctx.repo):
        _m, index = await anyio.to_thread.run_sync(ctx.repo.disk_index, manifest.point_id, key)
        rec = manifest.disk(key)
        assert rec is not None
        writer = await open_disk_for_write(ctx, vm, disk, modes)
        out = RestoredDisk(key, disk.file_name, disk.capacity_bytes, transport=writer.transport)
        chunk = index.chunk_size
        zero = bytes(chunk)
        try:
            meta = metadata_to_write(rec.metadata, fresh)
            if meta:
                await anyio.to_thread.run_sync(writer.write_metadata, meta)
            fetch = ctx.repo.slot_fetcher(manifest.point_id, key, index)
            # A fresh disk reads as zeros: its zero chunks need no write at all.
            if only_slots is not None:
                slots = sorted(set(only_slots))
            else:
                slots = [s for s, cid in enumerate(index.ids) if not (fresh and cid == ZERO_ID)]
            written = 0
            skipped = sum(index.slot_length(s) for s, cid in enumerate(index.ids) if cid == ZERO_ID)
            skipped = skipped if fresh and only_slots is None else 0
            done[0] += skipped

            def load(slot: int) -> bytes:
                # Fetching (read, decrypt, decompress, re-hash) runs in parallel; writes go in
                # ascending offsets, one at a time (a streamed PUT, one VDDK handle).
                data = fetch(slot)
                return zero[: index.slot_length(slot)] if data is None else data

            async def store(slot: int, data: bytes) -> None:
                nonlocal written
                await anyio.to_thread.run_sync(writer.write, slot * chunk, data)
                written += len(data)
                done[0] += len(data)
                if progress:
                    progress(done[0], total)

            await map_ordered(
                load, slots, workers=ctx.io_threads, limiter=ctx.io_limiter, consume=store
            )
            await anyio.to_thread.run_sync(writer.flush)
            out.written_bytes, out.skipped_zero_bytes = written, skipped
        finally:
            await in_thread_shielded(writer.close)
        if verify:
            bad = await verify_disk(ctx, vm, disk, index)
            out.verified = not bad
            if bad:
                raise UserError(verify_failure(manifest.point_id, key, disk, index, bad), 1)
        return out
