"""Where a VM restored as new goes: the inventory facts placement needs.

The datastore decides: the VM's files must land on it, so the VM goes into the vmFolder
of the datacenter holding that datastore, and into the root pool of a compute resource
whose hosts mount it (the host's own when --host is given). Picking "next to the first
VM of the inventory" instead may choose another datacenter, where CreateVM_Task fails.

Names of datastores and networks are unique within a datacenter only, so they are looked
up inside one (`datastores_in`, `networks_in`: a ContainerView rooted at the datacenter).
A host is usable when `runtime.connectionState` is "connected", it is not in maintenance
mode, and every datastore the VM needs lists it in `Datastore.host` with a mount that is
`mounted` (unset means true) and `accessible` (vSphere API, DatastoreHostMount and
HostMountInfo: "Flag that indicates if the datastore is currently accessible from the
host"; https://developer.broadcom.com/xapis/vsphere-web-services-api/7.0U3/vim.host.MountInfo.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from protector.errors import UserError
from protector.vsphere.views import read_through_view
from watcher.session import Session


async def datastores_in(session: Session, datacenter: Any) -> dict[str, Any]:
    """The datastores of one datacenter, by name (unique there, not across datacenters)."""
    return await _named(session, datacenter, vim.Datastore)


async def networks_in(session: Session, datacenter: Any) -> dict[str, Any]:
    """The networks (standard port groups, distributed port groups, opaque networks) of one
    datacenter, by name."""
    return await _named(session, datacenter, vim.Network)


async def datacenters_holding(session: Session, datastore_name: str) -> list[Any]:
    """Every datacenter with a datastore of that name."""
    view = await session.call(
        session.content.viewManager,
        "CreateContainerView",
        container=session.content.rootFolder,
        type=[vim.Datacenter],
        recursive=True,
    )
    view = session.client.bind(view)
    try:
        dcs = [session.client.bind(d) for d in (await session.properties(view, ["view"]))["view"]]
    finally:
        await session.call(view, "DestroyView")
    return [dc for dc in dcs if datastore_name in await datastores_in(session, dc)]


async def _named(session: Session, container: Any, kind: type) -> dict[str, Any]:
    objs = await read_through_view(session, container, kind, ["name"])
    return {
        str(p.val): session.client.bind(oc.obj)
        for oc in objs
        for p in oc.propSet or []
        if p.name == "name"
    }


async def datacenter_of(session: Session, obj: Any) -> Any:
    """The datacenter an inventory object belongs to (walking up its parents)."""
    current = obj
    for _ in range(64):  # inventory depth is small; a cycle would be a vCenter bug
        if isinstance(current, vim.Datacenter):
            return current
        parent = (await session.properties(current, ["parent"])).get("parent")
        if parent is None:
            break
        current = session.client.bind(parent)
    raise UserError(f"{obj._moId} is in no datacenter; pass --folder and --pool", 2)


@dataclass(frozen=True)
class HostFacts:
    host: Any
    name: str
    connection: str  # runtime.connectionState
    maintenance: bool
    datastores: frozenset[str]  # morefs of the datastores it mounts and can access


def choose_host(candidates: list[HostFacts], needed: dict[str, str]) -> tuple[Any | None, str]:
    """The first candidate that is connected, not in maintenance mode and mounts every
    needed datastore (moref → name); else None and why each was passed over. Pure."""
    why: list[str] = []
    for h in candidates:
        missing = sorted(name for moref, name in needed.items() if moref not in h.datastores)
        if h.connection != "connected":
            why.append(f"{h.name} is {h.connection}")
        elif h.maintenance:
            why.append(f"{h.name} is in maintenance mode")
        elif missing:
            why.append(f"{h.name} does not mount {', '.join(missing)}")
        else:
            return h.host, ""
    return None, "; ".join(why) or "no host to choose from"


async def host_facts(session: Session, hosts: list[Any]) -> list[HostFacts]:
    facts = []
    mounts_of: dict[str, list[Any]] = {}  # datastore moref → its Datastore.host, read once
    for h in hosts:
        props = await session.properties(
            h, ["name", "runtime.connectionState", "runtime.inMaintenanceMode", "datastore"]
        )
        usable = set()
        for ds in props.get("datastore") or []:
            if ds._moId not in mounts_of:
                mounts_of[ds._moId] = (await session.properties(ds, ["host"])).get("host") or []
            for m in mounts_of[ds._moId]:
                info = m.mountInfo
                if m.key._moId == h._moId and info.mounted is not False and info.accessible:
                    usable.add(ds._moId)
        facts.append(
            HostFacts(
                h,
                str(props.get("name", h._moId)),
                str(props.get("runtime.connectionState") or "unknown"),
                bool(props.get("runtime.inMaintenanceMode")),
                frozenset(usable),
            )
        )
    return facts


async def hosts_of_pool(session: Session, pool: Any) -> list[Any]:
    """The hosts of the compute resource (cluster or standalone host) owning the pool."""
    owner = (await session.properties(pool, ["owner"])).get("owner")
    if owner is None:
        return []
    hosts = (await session.properties(session.client.bind(owner), ["host"])).get("host") or []
    return [session.client.bind(h) for h in hosts]


async def hosts_mounting(session: Session, datastore: Any) -> list[Any]:
    mounts = (await session.properties(datastore, ["host"])).get("host") or []
    return [session.client.bind(m.key) for m in mounts]


async def root_pool_of(session: Session, host: Any) -> Any:
    compute = session.client.bind((await session.properties(host, ["parent"]))["parent"])
    pool = (await session.properties(compute, ["resourcePool"])).get("resourcePool")
    if pool is None:
        raise UserError(f"host {host._moId} has no resource pool; pass --pool", 2)
    return session.client.bind(pool)


async def vm_folder_of(session: Session, datacenter: Any) -> Any:
    return session.client.bind((await session.properties(datacenter, ["vmFolder"]))["vmFolder"])
