"""The restore point and its VM: loading the point and its saved configuration, finding
the VM it came from, and matching its saved disks onto a target VM's disks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from protector.context import Context
from protector.errors import UserError
from protector.vsphere.vmconfig import DiskInfo, deserialize_config
from repository import DiskRecord, Manifest
from watcher.soap import VsphereFault


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
    records: Sequence[DiskRecord], saved: list[DiskInfo], current: list[DiskInfo]
) -> dict[str, DiskInfo]:
    """Saved disk key → the target VM's disk: same device key, else same controller address.
    The mapping must be one-to-one: two saved disks written onto one target disk would leave
    it holding whichever came last."""
    by_key = {str(d.key): d for d in current}
    by_addr = {d.address: d for d in current if d.address}
    saved_addr = {str(d.key): d.address for d in saved}
    out: dict[str, DiskInfo] = {}
    for rec in records:
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
    _require_one_to_one(out, saved_addr)
    return out


def _require_one_to_one(mapping: dict[str, DiskInfo], saved_addr: dict[str, str | None]) -> None:
    claimed: dict[int, list[str]] = {}
    for key, target in mapping.items():
        claimed.setdefault(target.key, []).append(key)
    clashes = {k: keys for k, keys in claimed.items() if len(keys) > 1}
    if not clashes:
        return
    by_key = {t.key: t for t in mapping.values()}
    lines = [
        f"target disk {by_key[k].address or k} (key {k}, {by_key[k].file_name}) ← saved disks "
        + ", ".join(f"{s} (at {saved_addr.get(s) or '?'})" for s in keys)
        for k, keys in sorted(clashes.items())
    ]
    raise UserError(
        "the restore point's disks do not map one-to-one onto the target VM's disks (matched "
        "by device key, then by controller address): "
        + "; ".join(lines)
        + "; restore as a new VM instead",
        1,
    )


async def find_original_vm(ctx: Context, manifest: Manifest) -> Any:
    """The VM a point was taken from: by its saved instanceUuid (it survives re-registration,
    which gives the VM a new MoRef), else by the saved MoRef when that VM still has the same
    instanceUuid. A UserError when it is gone."""
    want = manifest.vm.instance_uuid.lower()
    if want:
        ref = await ctx.session.call(
            ctx.session.content.searchIndex,
            "FindByUuid",
            uuid=manifest.vm.instance_uuid,
            vmSearch=True,
            instanceUuid=True,
        )
        if ref is not None:
            return ctx.session.client.bind(ref)
    if manifest.vm.moref:
        vm = ctx.session.moref("VirtualMachine", manifest.vm.moref)
        try:
            props = await ctx.session.properties(vm, ["config.instanceUuid"])
        except VsphereFault:  # ManagedObjectNotFound: the MoRef is gone
            props = {}
        if (props.get("config.instanceUuid") or "").lower() == want:
            return vm
    raise UserError(
        f"the VM restore point {manifest.point_id} came from ({manifest.vm.name}, instanceUuid "
        f"{manifest.vm.instance_uuid}, was {manifest.vm.moref}) no longer exists; restore with "
        "--new-name instead",
        1,
    )
