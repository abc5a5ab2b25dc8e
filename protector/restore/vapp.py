"""Restoring a vApp set as a new vApp: the vApp tree is created again (CreateVApp with the
saved resource allocation; nested vApps inside their new parent), every member is restored
as a new VM into its new vApp through the as-new path (restore_as_new, which creates a VM
in a vApp with CreateChildVM_Task), then each new vApp gets its saved configuration —
start order (entityConfig rekeyed to the new VMs and child vApps), product and OVF
properties, IP allocation, annotation — with UpdateVAppConfig (protector/vsphere/vapps.py
has the vSphere facts).

A failure stops the restore and names what was created so far: the member being restored
is cleaned up by restore_as_new, the new vApps and members already restored stay (deleting
a vApp destroys its VMs, which the admin decides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from pyVmomi import vim

from protector.context import Context
from protector.errors import UserError
from protector.restore.as_new import restore_as_new
from protector.restore.placing import Placement, find_by_path, original_gone
from protector.restore.result import Progress, RestoreResult
from protector.vappsets import VappSet
from protector.vsphere.placement import datacenter_of, vm_folder_of
from protector.vsphere.vapps import (
    config_spec,
    new_resource_spec,
    resource_config_of,
    vapp_config_of,
)

log = structlog.get_logger(__name__)


@dataclass
class VappRestoreResult:
    set_id: str
    name: str
    moref: str = ""
    vapps: list[dict[str, str]] = field(default_factory=list)  # {name, moref, source}
    members: list[tuple[str, RestoreResult]] = field(default_factory=list)  # (source, result)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "set": self.set_id,
            "vapp": {"name": self.name, "moref": self.moref},
            "vapps": self.vapps,
            "members": [r.as_dict() | {"source_moref": src} for src, r in self.members],
            "notes": self.notes,
        }


async def _parent_pool(ctx: Context, vset: VappSet, pool_path: str | None) -> Any:
    if pool_path:
        return await find_by_path(ctx, pool_path, "resource pool")
    tree = vset.group.get("tree") or {}
    ref, kind = tree.get("parent"), tree.get("parent_type") or "ResourcePool"
    if not ref:
        raise UserError("the vApp set does not say where its vApp was; pass --pool", 2)
    pool = ctx.session.moref(kind, ref)
    try:
        await ctx.session.properties(pool, ["name"])
    except Exception as exc:
        if original_gone(exc):
            raise UserError(
                f"the resource pool the vApp {vset.group.get('name')!r} was in ({ref}) is "
                "gone; pass --pool",
                2,
            ) from None
        raise
    return pool


async def restore_vapp_set(
    ctx: Context,
    vset: VappSet,
    name: str,
    *,
    pool: str | None = None,
    folder: str | None = None,
    member_suffix: str | None = None,
    allow_incomplete: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
) -> VappRestoreResult:
    """Create vApp `name` (under `pool`, default the original's parent pool; in VM folder
    `folder`, default the datacenter's) holding the set's members and configuration."""
    if not vset.complete and not allow_incomplete:
        names = vset.names()
        missing = ", ".join(names.get(m, m) for m in vset.missing)
        raise UserError(
            f"vApp set {vset.id} is incomplete (no point of: {missing}); pass "
            "--allow-incomplete to restore the members it has",
            1,
        )
    suffix = f"-{name}" if member_suffix is None else member_suffix
    tree = vset.group.get("tree") or {}
    source = f"vApp set {vset.id}"
    parent = await _parent_pool(ctx, vset, pool)
    vm_folder = (
        await find_by_path(ctx, folder, "folder")
        if folder
        else await vm_folder_of(ctx.session, await datacenter_of(ctx.session, parent))
    )
    out = VappRestoreResult(vset.id, name)
    key_map: dict[str, Any] = {}  # saved MoRef value -> the new VM or vApp
    created: list[tuple[dict[str, Any], Any]] = []

    async def create(node: dict[str, Any], under: Any, new_name: str, root: bool) -> None:
        res = new_resource_spec(resource_config_of(node, source))
        new = await ctx.session.call(
            under,
            "CreateVApp",
            name=new_name,
            resSpec=res,
            configSpec=vim.vApp.VAppConfigSpec(),
            vmFolder=vm_folder if root else None,  # "must be null if this is a child vApp"
        )
        new = ctx.session.client.bind(new)
        key_map[node["moref"]] = new
        created.append((node, new))
        out.vapps.append({"name": new_name, "moref": new._moId, "source": node["moref"]})
        for child in node.get("children") or []:
            await create(child, new, child["name"], False)

    try:
        await create(tree, parent, name, True)
        out.moref = created[0][1]._moId
        for node, new_vapp in created:
            for moref in node.get("vms") or []:
                point = vset.points.get(moref)
                if point is None:
                    out.notes.append(f"member {moref} has no point in the set: not restored")
                    continue
                placement = Placement(f"{point.vm.name}{suffix}", folder=folder, pool_ref=new_vapp)
                result = await restore_as_new(
                    ctx, point.point_id, placement, verify=verify, progress=progress
                )
                out.members.append((moref, result))
                key_map[moref] = ctx.session.moref("VirtualMachine", result.vm_moref)
        for node, new_vapp in created:
            spec, notes = config_spec(vapp_config_of(node, source), key_map)
            out.notes.extend(notes)
            await ctx.session.call(new_vapp, "UpdateVAppConfig", spec=spec)
    except Exception as exc:
        made = ", ".join(f"{v['name']} ({v['moref']})" for v in out.vapps) or "nothing"
        restored = ", ".join(f"{r.vm_name} ({r.vm_moref})" for _, r in out.members) or "none"
        raise UserError(
            f"restoring vApp set {vset.id} as {name!r} failed: {exc}; created so far: vApps "
            f"{made}, members {restored} (left in place: delete them or restore again under "
            "another name)",
            1,
        ) from exc
    log.info("restore.vapp_done", set=vset.id, vapp=name, members=len(out.members))
    return out
