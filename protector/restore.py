"""Restoring a restore point: onto the existing VM, or as a new VM.

To the existing VM (the seed): it must be powered off; its disks are written under
their *current* names (the VM may be running on a snapshot chain), matched to the
saved disks by device key, then by controller address; capacities must match.

As a new VM: a ConfigSpec rebuilt from the saved ConfigInfo (configspec.py), placed
where the admin says (or where the VM was), CreateVM_Task, disk metadata written
before data, only non-zero chunks written (the new disks read as zeros), optional
power on. `verify` re-reads every written chunk and compares its hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from repository import Manifest
from repository.codec import ZERO_ID
from watcher.tasks import wait_for_task

from .configspec import build_config_spec, video_card_edit_spec
from .context import Context
from .diskaccess import open_disk_for_write
from .errors import UserError
from .parallel import map_bounded, map_ordered
from .vmconfig import DiskInfo, deserialize_config, disk_summaries

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class RestoredDisk:
    key: str
    target: str
    capacity_bytes: int
    written_bytes: int = 0
    skipped_zero_bytes: int = 0
    transport: str = ""
    verified: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RestoreResult:
    point_id: str
    vm_moref: str
    vm_name: str
    mode: str  # "existing" | "new"
    disks: list[RestoredDisk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    powered_on: bool = False

    @property
    def written_bytes(self) -> int:
        return sum(d.written_bytes for d in self.disks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "point_id": self.point_id,
            "vm": {"moref": self.vm_moref, "name": self.vm_name},
            "mode": self.mode,
            "written_bytes": self.written_bytes,
            "disks": [d.as_dict() for d in self.disks],
            "notes": self.notes,
            "powered_on": self.powered_on,
        }


async def load_point(ctx: Context, point_id: str) -> Manifest:
    from repository.errors import PointNotFoundError

    try:
        return await anyio.to_thread.run_sync(ctx.repo.load_manifest, point_id)
    except PointNotFoundError:
        raise UserError(
            f"no restore point {point_id!r}; `vigil list` shows the points", 2
        ) from None


def saved_config(manifest: Manifest) -> Any:
    info = manifest.config_info or {}
    if "xml" not in info:
        raise UserError(f"restore point {manifest.point_id} holds no VM configuration", 1)
    return deserialize_config(info["xml"], source=f"restore point {manifest.point_id}")


def match_disks(
    manifest: Manifest, saved: list[DiskInfo], current: list[DiskInfo]
) -> dict[str, DiskInfo]:
    """Saved disk key → the target VM's disk: same device key, else same controller address."""
    by_key = {str(d.key): d for d in current}
    by_addr = {d.address: d for d in current if d.address}
    saved_addr = {str(d.key): d.address for d in saved}
    out: dict[str, DiskInfo] = {}
    for rec in manifest.disks:
        target = by_key.get(rec.key) or by_addr.get(saved_addr.get(rec.key))
        if target is None:
            raise UserError(
                f"the target VM has no disk matching saved disk {rec.key} "
                f"({rec.base_name or saved_addr.get(rec.key)}); restore as a new VM instead",
                1,
            )
        if target.capacity_bytes != rec.capacity:
            raise UserError(
                f"disk {target.address or target.key} of the target VM has "
                f"{target.capacity_bytes} bytes, the restore point's disk {rec.key} has "
                f"{rec.capacity}; sizes must match (restore as a new VM instead)",
                1,
            )
        out[rec.key] = target
    return out


async def _power_off(ctx: Context, vm: Any, allow: bool, name: str) -> None:
    props = await ctx.session.properties(vm, ["runtime.powerState"])
    if props.get("runtime.powerState") == "poweredOff":
        return
    if not allow:
        raise UserError(
            f"VM {name} is {props.get('runtime.powerState')}; its disks cannot be written while "
            "it runs: shut it down first, or pass --power-off",
            2,
        )
    task = await ctx.session.call(vm, "PowerOffVM_Task")
    await wait_for_task(ctx.session, task, description=f"power off {name}")


async def restore_to_existing(
    ctx: Context,
    point_id: str,
    vm: Any,
    *,
    power_off: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    manifest = await load_point(ctx, point_id)
    props = await ctx.session.properties(vm, ["name", "config"])
    name = props.get("name", vm._moId)
    saved = disk_summaries(saved_config(manifest)) if manifest.config_info else []
    targets = match_disks(manifest, saved, disk_summaries(props["config"]))
    await _power_off(ctx, vm, power_off, name)
    result = RestoreResult(point_id, vm._moId, name, "existing")
    total = sum(r.capacity for r in manifest.disks)
    done = [0]
    for rec in manifest.disks:
        disk = targets[rec.key]
        result.disks.append(
            await _write_disk(
                ctx,
                manifest,
                rec.key,
                vm,
                disk,
                fresh=False,
                verify=verify,
                progress=progress,
                done=done,
                total=total,
            )
        )
    log.info("restore.done", point=point_id, vm=name, mode="existing", bytes=result.written_bytes)
    return result


@dataclass(frozen=True)
class Placement:
    name: str
    folder: str | None = None  # inventory path
    pool: str | None = None
    datastore: str | None = None  # datastore name
    host: str | None = None  # inventory path or host name


async def _find_by_path(ctx: Context, path: str, what: str) -> Any:
    idx = ctx.session.content.searchIndex
    ref = await ctx.session.call(idx, "FindByInventoryPath", inventoryPath=path.strip("/"))
    if ref is None:
        raise UserError(f"{what} {path!r} not found; `vigil inventory` shows the paths", 2)
    return ctx.session.client.bind(ref)


async def _default_placement(ctx: Context, manifest: Manifest, config: Any) -> dict[str, Any]:
    """Where the original VM lived, if it still exists: its folder, pool and datastore."""
    vm = ctx.session.moref("VirtualMachine", manifest.vm.moref) if manifest.vm.moref else None
    if vm is not None:
        try:
            props = await ctx.session.properties(
                vm, ["parent", "resourcePool", "config.instanceUuid"]
            )
            if (
                props.get("config.instanceUuid") or ""
            ).lower() == manifest.vm.instance_uuid.lower():
                return {"folder": props.get("parent"), "pool": props.get("resourcePool")}
        except Exception:  # the original is gone: fall back to the first datacenter
            pass
    return {}


async def _datastore_name(ctx: Context, config: Any) -> str:
    path = config.files.vmPathName or ""
    if path.startswith("[") and "]" in path:
        return path[1 : path.index("]")]
    raise UserError("cannot tell the original datastore; pass --datastore", 2)


async def _first_pool_and_folder(ctx: Context) -> tuple[Any, Any]:
    from watcher.inventory import read_inventory

    tree = await read_inventory(ctx.session)
    vms = tree.vms()
    if not vms:
        raise UserError("no VM to take a default folder and pool from; pass --folder and --pool")
    v = vms[0]
    folder = await _find_by_path(ctx, v.folder, "folder")
    pool = await _find_by_path(ctx, v.resource_pool, "resource pool") if v.resource_pool else None
    return folder, pool


async def restore_as_new(
    ctx: Context,
    point_id: str,
    placement: Placement,
    *,
    power_on: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    manifest = await load_point(ctx, point_id)
    config = saved_config(manifest)
    defaults = await _default_placement(ctx, manifest, config)
    folder = (
        await _find_by_path(ctx, placement.folder, "folder")
        if placement.folder
        else defaults.get("folder")
    )
    pool = (
        await _find_by_path(ctx, placement.pool, "resource pool")
        if placement.pool
        else defaults.get("pool")
    )
    if folder is None or pool is None:
        f, p = await _first_pool_and_folder(ctx)
        folder, pool = folder or f, pool or p
    host = await _find_by_path(ctx, placement.host, "host") if placement.host else None
    ds_name = placement.datastore or await _datastore_name(ctx, config)

    rebuilt = build_config_spec(config, name=placement.name, datastore_name=ds_name)
    left_out = set(map(str, rebuilt.left_out_disks))
    task = await ctx.session.call(
        folder, "CreateVM_Task", config=rebuilt.spec, pool=pool, host=host
    )
    new_ref = await wait_for_task(ctx.session, task, description=f"create VM {placement.name}")
    new_vm = ctx.session.client.bind(new_ref)
    props = await ctx.session.properties(new_vm, ["config"])
    new_config = props["config"]
    edit = video_card_edit_spec(config, list(new_config.hardware.device))
    if edit is not None:
        t = await ctx.session.call(new_vm, "ReconfigVM_Task", spec=edit)
        await wait_for_task(ctx.session, t, description="video card settings")
    result = RestoreResult(point_id, new_vm._moId, placement.name, "new", notes=list(rebuilt.notes))
    saved = disk_summaries(config)
    current = disk_summaries(new_config)
    records = [r for r in manifest.disks if r.key not in left_out]
    by_addr = {d.address: d for d in current if d.address}
    saved_addr = {str(d.key): d.address for d in saved}
    total = sum(r.capacity for r in records)
    done = [0]
    for rec in records:
        disk = by_addr.get(saved_addr.get(rec.key))
        if disk is None or disk.capacity_bytes != rec.capacity:
            raise UserError(
                f"new VM {placement.name} has no disk at {saved_addr.get(rec.key)} with "
                f"{rec.capacity} bytes for saved disk {rec.key}",
                1,
            )
        result.disks.append(
            await _write_disk(
                ctx,
                manifest,
                rec.key,
                new_vm,
                disk,
                fresh=True,
                verify=verify,
                progress=progress,
                done=done,
                total=total,
            )
        )
    if power_on:
        t = await ctx.session.call(new_vm, "PowerOnVM_Task")
        await wait_for_task(ctx.session, t, description=f"power on {placement.name}")
        result.powered_on = True
    log.info(
        "restore.done", point=point_id, vm=placement.name, mode="new", bytes=result.written_bytes
    )
    return result


async def _write_disk(
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
) -> RestoredDisk:
    """Write a saved disk onto `disk`. A fresh disk reads as zeros, so zero chunks are skipped;
    an existing one gets zeros written where the point has them."""
    _m, index = await anyio.to_thread.run_sync(ctx.repo.disk_index, manifest.point_id, key)
    rec = manifest.disk(key)
    assert rec is not None
    writer = await open_disk_for_write(ctx, vm, disk)
    out = RestoredDisk(key, disk.file_name, disk.capacity_bytes, transport=writer.transport)
    chunk = index.chunk_size
    zero = bytes(chunk)
    try:
        if rec.metadata:
            await anyio.to_thread.run_sync(writer.write_metadata, dict(rec.metadata))
        fetch = ctx.repo._fetcher(manifest.point_id, key, index)
        # A fresh disk reads as zeros: its zero chunks need no write at all.
        slots = [s for s, cid in enumerate(index.ids) if not (fresh and cid == ZERO_ID)]
        written = 0
        skipped = sum(index.slot_length(s) for s, cid in enumerate(index.ids) if cid == ZERO_ID)
        skipped = skipped if fresh else 0
        done[0] += skipped

        def load(slot: int) -> bytes:
            # Fetching (read, decrypt, decompress, re-hash) runs in parallel; writes go in
            # ascending offsets, one at a time (a streamed PUT, one VDDK handle).
            if index.ids[slot] == ZERO_ID:
                return zero[: index.slot_length(slot)]
            _offset, data = fetch(slot)
            assert data is not None
            return data

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
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.close)
    if verify:
        out.verified = await _verify_disk(ctx, manifest, key, vm, disk, index)
        if not out.verified:
            raise UserError(
                f"verification failed: disk {disk.file_name} does not read back as restore point "
                f"{manifest.point_id} disk {key}",
                1,
            )
    return out


async def _verify_disk(
    ctx: Context, manifest: Manifest, key: str, vm: Any, disk: DiskInfo, index: Any
) -> bool:
    """Re-read the written disk and compare every chunk with the restore point's."""
    from .diskaccess import open_disk_for_read

    reader = await open_disk_for_read(ctx, vm, None, disk, None)
    fetch = ctx.repo._fetcher(manifest.point_id, key, index)
    try:

        def same(slot: int) -> bool:
            offset = slot * index.chunk_size
            length = index.slot_length(slot)
            got = reader.read(offset, length)
            if index.ids[slot] == ZERO_ID:
                return got == bytes(length)
            _, want = fetch(slot)
            return hashlib.blake2b(got).digest() == hashlib.blake2b(want).digest()

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
        for slot in sorted(bad)[:10]:
            log.error("restore.verify_mismatch", disk=disk.file_name, slot=slot)
        return not bad
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(reader.close)
