"""A vApp's own configuration: reading it (with its nested vApps) and applying it to a new one.

What a vApp is made of (vSphere API, VirtualApp): it is a ResourcePool, so it has the pool's
`config` (ResourceConfigSpec: cpu/memory allocation); `vAppConfig` (VAppConfigInfo) holds
`entityConfig` — one VAppEntityConfigInfo per direct child VM or child vApp, keyed by its
MoRef: tag, startOrder, startDelay, waitingForGuest, startAction, stopDelay, stopAction,
destroyWithParent ("the behavior of an entity (virtual machine or sub-vApp container) in a
vApp container") — the `product` and `property` (OVF) sections, `ipAssignment`, `eula`,
`ovfEnvironmentTransport`, `installBootRequired`/`installBootStopDelay` and `annotation`.
Its direct VMs are `vm`; child vApps are found by their `parentVApp` ("Reference to the
parent vApp", VirtualApp.parentVApp) — the parent's `resourcePool` would list them too,
but govmomi 0.24.2's simulator answers that property of a VirtualApp with its embedded
ResourcePool object (docs/vcsim.md, known quirks), so one ContainerView read of every
vApp's `parentVApp` serves both.

Saved form: the VAppConfigInfo and the ResourceConfigSpec in pyvmomi's SOAP encoding (as
vmconfig.serialize_config saves a VM's ConfigInfo: every data object keeps its xsi:type),
inside a plain dict per vApp: {moref, name, parent, parent_type, vapp_config,
resource_config, vms, vm_names, children}.

Creating again: ResourcePool.CreateVApp(name, resSpec, configSpec, vmFolder) — vmFolder
"must be null if this is a child vApp" (vSphere API, CreateVApp) — and then
VirtualApp.UpdateVAppConfig(spec) with entityConfig rekeyed to the new MoRefs; products and
properties are `add` ArrayUpdateSpecs (a new vApp has none). VMs are created in a vApp with
its CreateChildVM_Task: "A virtual machine in a vApp is not associated with a VM folder and
therefore cannot be created using the method on a Folder" (vSphere API,
ResourcePool.CreateChildVM_Task).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyVmomi import SoapAdapter, vim

from protector.vsphere.views import read_through_view
from protector.vsphere.vmconfig import SERIALIZE_VERSION, ConfigFormatError
from watcher.session import Session

VAPP_PROPS = ["name", "vAppConfig", "config", "vm", "parent"]


def _to_xml(obj: Any) -> str | None:
    if obj is None:
        return None
    data = SoapAdapter.Serialize(obj, version=SERIALIZE_VERSION)
    return data.decode("utf-8") if isinstance(data, bytes) else data


def _from_xml(text: str | None, kind: type, source: str) -> Any:
    if text is None:
        return None
    try:
        obj = SoapAdapter.Deserialize(text.encode("utf-8"), kind)
    except Exception as exc:  # expat, KeyError and TypeError alike
        raise ConfigFormatError(f"{source}: cannot decode ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, kind):
        raise ConfigFormatError(f"{source}: holds a {type(obj).__name__}, not a {kind.__name__}")
    return obj


async def child_vapps(session: Session) -> dict[str, list[Any]]:
    """Parent vApp MoRef value -> its child vApps, for the whole inventory (one read)."""
    objs = await read_through_view(
        session, session.content.rootFolder, vim.VirtualApp, ["parentVApp"]
    )
    out: dict[str, list[Any]] = {}
    for oc in objs:
        for p in oc.propSet or []:
            if p.name == "parentVApp" and p.val is not None:
                out.setdefault(p.val._moId, []).append(session.client.bind(oc.obj))
    for kids in out.values():
        kids.sort(key=lambda k: k._moId)
    return out


async def read_vapp(
    session: Session, vapp: Any, *, children: dict[str, list[Any]] | None = None, depth: int = 0
) -> dict[str, Any]:
    """The vApp's saved form, nested vApps included (plain resource pools inside a vApp are
    not followed: vCenter lets VMs of a vApp live only in it or its child vApps)."""
    if depth > 32:
        raise ValueError(f"vApp {vapp._moId}: nested deeper than 32 levels")
    if children is None:
        children = await child_vapps(session)
    props = await session.properties(vapp, VAPP_PROPS)
    nested = [
        await read_vapp(session, kid, children=children, depth=depth + 1)
        for kid in children.get(vapp._moId, [])
    ]
    parent = props.get("parent")
    vms = [session.client.bind(v) for v in props.get("vm") or []]
    vm_names = {v._moId: str((await session.properties(v, ["name"])).get("name", "")) for v in vms}
    return {
        "moref": vapp._moId,
        "name": str(props.get("name", "")),
        "parent": parent._moId if parent is not None else None,
        "parent_type": parent._wsdlName if parent is not None else None,
        "vapp_config": _to_xml(props.get("vAppConfig")),
        "resource_config": _to_xml(props.get("config")),
        "vms": [v._moId for v in vms],
        "vm_names": vm_names,  # for people: which member a missing point was
        "children": nested,
    }


async def vapp_vms(
    session: Session, vapp: Any, *, children: dict[str, list[Any]] | None = None
) -> list[str]:
    """The MoRef values of every VM of the vApp, nested vApps included, in member_morefs
    order — without the configuration read_vapp saves: one `vm` read per vApp of the tree
    and one read of every vApp's `parentVApp` (child_vapps). `vigil backup --vapp` reads
    these members' nodes (vmfind.read_vms) instead of the whole inventory."""
    if children is None:
        children = await child_vapps(session)
    out: list[str] = []
    todo, seen = [vapp], set()
    while todo:  # depth-first, parents before children, as walk()
        node = todo.pop()
        if node._moId in seen:  # a cycle is no inventory vCenter makes; never loop on one
            continue
        seen.add(node._moId)
        vms = (await session.properties(node, ["vm"])).get("vm") or []
        out.extend(v._moId for v in vms)
        todo.extend(reversed(children.get(node._moId, [])))
    return out


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every vApp of a saved tree, parents before children."""
    yield node
    for child in node.get("children") or []:
        yield from walk(child)


def member_morefs(node: dict[str, Any]) -> list[str]:
    """Every VM of the saved tree, nested vApps included."""
    return [vm for n in walk(node) for vm in n.get("vms") or []]


def vapp_config_of(node: dict[str, Any], source: str) -> Any:
    return _from_xml(node.get("vapp_config"), vim.vApp.VAppConfigInfo, source)


def resource_config_of(node: dict[str, Any], source: str) -> Any:
    return _from_xml(node.get("resource_config"), vim.ResourceConfigSpec, source)


def summary(node: dict[str, Any], names: dict[str, str], source: str) -> dict[str, Any]:
    """What a person wants to see of a saved vApp: start order per member, products,
    properties, IP allocation, nested vApps. `names` maps MoRefs to member names."""
    cfg = vapp_config_of(node, source)
    entities = []
    for e in (cfg.entityConfig if cfg else None) or []:
        key = e.key._moId if e.key is not None else None
        entities.append(
            {
                "member": names.get(key or "", key),
                "moref": key,
                "tag": e.tag,
                "start_order": e.startOrder,
                "start_delay": e.startDelay,
                "waiting_for_guest": e.waitingForGuest,
                "start_action": e.startAction,
                "stop_delay": e.stopDelay,
                "stop_action": e.stopAction,
            }
        )
    ip = cfg.ipAssignment if cfg else None
    return {
        "name": node["name"],
        "moref": node["moref"],
        "vms": [names.get(v, v) for v in node.get("vms") or []],
        "entities": sorted(entities, key=lambda e: (e["start_order"] or 0, str(e["member"]))),
        "products": [
            {"key": p.key, "name": p.name, "vendor": p.vendor, "version": p.version}
            for p in ((cfg.product if cfg else None) or [])
        ],
        "properties": [
            {"key": p.key, "id": p.id, "type": p.type, "value": p.value, "default": p.defaultValue}
            for p in ((cfg.property if cfg else None) or [])
        ],
        "ip_allocation": {
            "policy": ip.ipAllocationPolicy if ip else None,
            "protocol": ip.ipProtocol if ip else None,
        },
        "annotation": cfg.annotation if cfg else None,
        "children": [summary(c, names, source) for c in node.get("children") or []],
    }


def new_resource_spec(saved: Any) -> vim.ResourceConfigSpec:
    """The saved allocation for a new pool: the old entity, change version and time are
    the original's, not the new vApp's."""
    if saved is None:
        return _default_resource_spec()
    saved.entity = None
    saved.changeVersion = None
    saved.lastModified = None
    return saved


def _default_resource_spec() -> vim.ResourceConfigSpec:
    def alloc() -> vim.ResourceAllocationInfo:
        return vim.ResourceAllocationInfo(
            reservation=0,
            expandableReservation=True,
            limit=-1,
            shares=vim.SharesInfo(level="normal", shares=0),
        )

    return vim.ResourceConfigSpec(cpuAllocation=alloc(), memoryAllocation=alloc())


def config_spec(saved: Any, key_map: dict[str, Any]) -> tuple[vim.vApp.VAppConfigSpec, list[str]]:
    """An UpdateVAppConfig spec recreating `saved` (a VAppConfigInfo) on a new vApp;
    entityConfig keys go through `key_map` (old MoRef value → new MoRef). Entities whose
    member was not restored are left out and named in the notes."""
    notes: list[str] = []
    spec = vim.vApp.VAppConfigSpec()
    if saved is None:
        return spec, notes
    entities = []
    for e in saved.entityConfig or []:
        old = e.key._moId if e.key is not None else None
        new = key_map.get(old or "")
        if new is None:
            notes.append(f"start order of {old} not restored: that member was not restored")
            continue
        entities.append(
            vim.vApp.EntityConfigInfo(
                key=new,
                tag=e.tag,
                startOrder=e.startOrder,
                startDelay=e.startDelay,
                waitingForGuest=e.waitingForGuest,
                startAction=e.startAction,
                stopDelay=e.stopDelay,
                stopAction=e.stopAction,
                destroyWithParent=e.destroyWithParent,
            )
        )
    spec.entityConfig = entities
    spec.product = [vim.vApp.ProductSpec(operation="add", info=p) for p in saved.product or []]
    spec.property = [vim.vApp.PropertySpec(operation="add", info=p) for p in saved.property or []]
    spec.ipAssignment = saved.ipAssignment
    spec.eula = list(saved.eula or [])
    spec.ovfEnvironmentTransport = list(saved.ovfEnvironmentTransport or [])
    spec.installBootRequired = saved.installBootRequired
    spec.installBootStopDelay = saved.installBootStopDelay
    if saved.annotation:
        spec.annotation = saved.annotation
    return spec, notes
