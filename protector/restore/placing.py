"""Where a restore as a new VM puts the VM, each disk and each network adapter.

- Each disk goes back to the datastore it was on (its base disk's), the VM's own files to
  the .vmx's datastore; `--datastore` sends everything to one datastore, `--datastore-map
  SRC=DST` (repeatable) redirects one source datastore (and wins over --datastore).
- `--network-map SRC=DST` moves the adapters that were on network SRC to network DST.
- Names of datastores and networks are unique within a datacenter only: all are looked up
  in the target datacenter — the one of --folder/--pool/--host, else of the original VM,
  else the one datacenter holding the .vmx's datastore (several: an error asking which).
- The host is one that is connected, not in maintenance mode and mounts every datastore
  the VM needs (vsphere.placement.choose_host); it is passed to CreateVM_Task, which takes
  "a host that is a member of the ComputeResource indirectly specified by the pool"
  (vSphere API, CreateVM_Task / MarkAsVirtualMachine `host`).
- Looking up the original VM failing for any reason but "it is gone" (ManagedObjectNotFound,
  or the MoRef now names another VM) is an error: silently placing the VM elsewhere would
  surprise the admin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from protector.context import Context
from protector.errors import UserError
from protector.vsphere.dspath import split_datastore_path
from protector.vsphere.placement import (
    choose_host,
    datacenter_of,
    datacenters_holding,
    datastores_in,
    host_facts,
    hosts_mounting,
    hosts_of_pool,
    networks_in,
    root_pool_of,
    vm_folder_of,
)
from protector.vsphere.vmconfig import devices_of
from repository import Manifest
from watcher.soap import VsphereFault

D = vim.vm.device


@dataclass(frozen=True)
class Placement:
    name: str
    folder: str | None = None  # inventory path
    pool: str | None = None
    datastore: str | None = None  # datastore name: every file there
    host: str | None = None  # inventory path or host name
    datastore_map: dict[str, str] = field(default_factory=dict)  # source name → target name
    network_map: dict[str, str] = field(default_factory=dict)
    # A pool (or vApp) already in hand, e.g. the new vApp a vApp set restores into.
    pool_ref: Any = None


@dataclass
class Resolved:
    folder: Any
    pool: Any
    host: Any
    datastore: str  # the .vmx's datastore name
    disk_files: dict[int, str]  # saved disk key → "[datastore]"
    networks: dict[str, Any]  # source network name → the adapter backing for its target
    portgroup_names: dict[str, str]  # distributed port group key → name, in the datacenter


# What each placement option must name, and the vSphere types that qualify.
PLACEMENT_KINDS: dict[str, tuple[type, ...]] = {
    "folder": (vim.Folder,),
    "resource pool": (vim.ResourcePool,),
    "host": (vim.HostSystem,),
}


def parse_mapping(values: list[str] | None, option: str) -> dict[str, str]:
    """["SRC=DST", ...] → {SRC: DST}; a clear error for a malformed or repeated SRC. Pure."""
    out: dict[str, str] = {}
    for v in values or []:
        src, sep, dst = v.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise UserError(f"{option} {v!r}: expected SRC=DST, like {option} ds1=ds2", 2)
        if src in out and out[src] != dst:
            raise UserError(f"{option}: {src!r} is mapped twice ({out[src]!r}, {dst!r})", 2)
        out[src] = dst
    return out


def source_datastores(config: Any) -> tuple[str, dict[int, str]]:
    """(the .vmx's datastore, saved disk key → its base disk's datastore). Pure."""
    try:
        vmx = split_datastore_path(config.files.vmPathName or "")[0]
    except ValueError:
        raise UserError("cannot tell the original datastore; pass --datastore", 2) from None
    disks: dict[int, str] = {}
    for dev in devices_of(config):
        if not isinstance(dev, D.VirtualDisk):
            continue
        root = dev.backing
        while getattr(root, "parent", None) is not None and getattr(root.parent, "fileName", ""):
            root = root.parent
        try:
            disks[dev.key] = split_datastore_path(getattr(root, "fileName", "") or "")[0]
        except ValueError:
            disks[dev.key] = vmx
    return vmx, disks


def target_datastore(src: str, placement: Placement) -> str:
    return placement.datastore_map.get(src) or placement.datastore or src


def nic_network_name(backing: Any, portgroup_names: dict[str, str]) -> str | None:
    """The network a saved adapter was on: a standard port group's name, a distributed port
    group's name (by its key, else the key itself). Pure."""
    if isinstance(backing, D.VirtualEthernetCard.NetworkBackingInfo):
        return backing.deviceName
    if isinstance(backing, D.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = backing.port.portgroupKey if backing.port else None
        return portgroup_names.get(key or "", key)
    if isinstance(backing, D.VirtualEthernetCard.OpaqueNetworkBackingInfo):
        return backing.opaqueNetworkId
    return None


def original_gone(exc: Exception) -> bool:
    return isinstance(exc, VsphereFault) and exc.fault_type == "ManagedObjectNotFound"


async def find_by_path(ctx: Context, path: str, what: str) -> Any:
    idx = ctx.session.content.searchIndex
    ref = await ctx.session.call(idx, "FindByInventoryPath", inventoryPath=path.strip("/"))
    if ref is None:
        raise UserError(f"{what} {path!r} not found; `vigil inventory` shows the paths", 2)
    kinds = PLACEMENT_KINDS.get(what)
    if kinds and not isinstance(ref, kinds):
        found = type(ref).__name__.rsplit(".", 1)[-1]
        raise UserError(
            f"{path!r} is a {found}, not a {what}; give the inventory path of a {what}", 2
        )
    return ctx.session.client.bind(ref)


async def original_location(ctx: Context, manifest: Manifest) -> dict[str, Any]:
    """The original VM's folder and pool, or {} when it no longer exists."""
    if not manifest.vm.moref:
        return {}
    vm = ctx.session.moref("VirtualMachine", manifest.vm.moref)
    try:
        props = await ctx.session.properties(vm, ["parent", "resourcePool", "config.instanceUuid"])
    except Exception as exc:
        if original_gone(exc):
            return {}
        raise UserError(
            f"looking up the original VM {manifest.vm.name} ({manifest.vm.moref}) to restore "
            f"next to it failed: {exc}; retry, or pass --folder and --pool",
            1,
        ) from exc
    if (props.get("config.instanceUuid") or "").lower() != manifest.vm.instance_uuid.lower():
        return {}  # the MoRef now names another VM: the original is gone
    return {"folder": props.get("parent"), "pool": props.get("resourcePool")}


async def _datacenter(ctx: Context, anchors: list[Any], vmx_target: str) -> Any:
    for obj in anchors:
        if obj is not None:
            return await datacenter_of(ctx.session, ctx.session.client.bind(obj))
    dcs = await datacenters_holding(ctx.session, vmx_target)
    if len(dcs) == 1:
        return dcs[0]
    if not dcs:
        raise UserError(f"datastore {vmx_target!r} not found; check --datastore", 2)
    names = [str((await ctx.session.properties(dc, ["name"]))["name"]) for dc in dcs]
    raise UserError(
        f"datastore {vmx_target!r} exists in several datacenters ({', '.join(names)}); "
        "pass --folder or --pool to choose one",
        2,
    )


async def _networks(
    ctx: Context, dc: Any, config: Any, wanted: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    if not wanted:
        return {}, {}
    by_name = await networks_in(ctx.session, dc)
    pg_names: dict[str, str] = {}
    for name, net in by_name.items():
        if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
            pg_names[str((await ctx.session.properties(net, ["key"]))["key"])] = name
    had = {
        n
        for d in devices_of(config)
        if isinstance(d, D.VirtualEthernetCard)
        and (n := nic_network_name(d.backing, pg_names)) is not None
    }
    out: dict[str, Any] = {}
    for src, dst in wanted.items():
        if src not in had:
            raise UserError(
                f"--network-map {src}={dst}: the VM had no adapter on {src!r} "
                f"(its networks: {', '.join(sorted(had)) or 'none'})",
                2,
            )
        if dst not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise UserError(f"network {dst!r} not found in the datacenter (networks: {known})", 2)
        out[src] = await _backing(ctx, src, by_name[dst])
    return out, pg_names


async def resolve(ctx: Context, manifest: Manifest, config: Any, placement: Placement) -> Resolved:
    folder = await find_by_path(ctx, placement.folder, "folder") if placement.folder else None
    pool = placement.pool_ref
    if pool is None and placement.pool:
        pool = await find_by_path(ctx, placement.pool, "resource pool")
    host = await find_by_path(ctx, placement.host, "host") if placement.host else None
    if folder is None or pool is None:
        orig = await original_location(ctx, manifest)
        folder = folder or orig.get("folder")
        pool = pool or orig.get("pool")
        folder = ctx.session.client.bind(folder) if folder is not None else None
        pool = ctx.session.client.bind(pool) if pool is not None else None

    vmx_src, disk_src = source_datastores(config)
    vmx = target_datastore(vmx_src, placement)
    dc = await _datacenter(ctx, [host, pool, folder], vmx)
    there = await datastores_in(ctx.session, dc)
    targets = {vmx, *(target_datastore(s, placement) for s in disk_src.values())}
    missing = sorted(t for t in targets if t not in there)
    if missing:
        known = ", ".join(sorted(there)) or "none"
        raise UserError(
            f"datastore {', '.join(map(repr, missing))} not found in the target datacenter "
            f"(datastores there: {known}); check --datastore / --datastore-map",
            2,
        )
    needed = {there[t]._moId: t for t in targets}
    if host is not None:
        candidates = [host]
    elif pool is not None:
        candidates = await hosts_of_pool(ctx.session, pool)
    else:
        candidates = await hosts_mounting(ctx.session, there[vmx])
    chosen, why = choose_host(await host_facts(ctx.session, candidates), needed)
    if chosen is None:
        raise UserError(
            f"no host can run the restored VM ({why}); pass --host, or map the datastores "
            "with --datastore-map onto ones a connected host mounts",
            2,
        )
    networks, pg_names = await _networks(ctx, dc, config, placement.network_map)
    return Resolved(
        folder=folder or await vm_folder_of(ctx.session, dc),
        pool=pool or await root_pool_of(ctx.session, chosen),
        host=chosen,
        datastore=vmx,
        disk_files={k: f"[{target_datastore(s, placement)}]" for k, s in disk_src.items()},
        networks=networks,
        portgroup_names=pg_names,
    )


def remap_networks(spec: Any, resolved: Resolved) -> None:
    """Point the new VM's adapters that were on a mapped network at its target. Pure."""
    for change in spec.deviceChange or []:
        dev = change.device
        if isinstance(dev, D.VirtualEthernetCard):
            src = nic_network_name(dev.backing, resolved.portgroup_names)
            if src in resolved.networks:
                dev.backing = resolved.networks[src]


async def _backing(ctx: Context, src: str, net: Any) -> Any:
    if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
        props = await ctx.session.properties(net, ["key", "config.distributedVirtualSwitch"])
        dvs = ctx.session.client.bind(props["config.distributedVirtualSwitch"])
        uuid = (await ctx.session.properties(dvs, ["uuid"]))["uuid"]
        return D.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=uuid, portgroupKey=props["key"])
        )
    if isinstance(net, vim.OpaqueNetwork):
        raise UserError(f"--network-map {src}=...: opaque networks are not supported", 2)
    name = (await ctx.session.properties(net, ["name"]))["name"]
    return D.VirtualEthernetCard.NetworkBackingInfo(deviceName=name, network=net)
