"""Where a VM restored as new goes when the admin names no folder or pool.

The datastore decides: the VM's files must land on it, so the VM goes into the vmFolder
of the datacenter holding that datastore, and into the root pool of a compute resource
whose hosts mount it (the host's own when --host is given). Picking "next to the first
VM of the inventory" instead may choose another datacenter, where CreateVM_Task fails.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from protector.errors import UserError
from watcher.session import Session


async def find_datastore(session: Session, name: str) -> Any:
    """The datastore called `name`, or an error listing the ones there are."""
    found = await _datastores(session)
    if name in found:
        return found[name]
    known = ", ".join(sorted(found)) or "none"
    raise UserError(f"datastore {name!r} not found (datastores: {known}); check --datastore", 2)


async def _datastores(session: Session) -> dict[str, Any]:
    content = session.content
    view = await session.call(
        content.viewManager,
        "CreateContainerView",
        container=content.rootFolder,
        type=[vim.Datastore],
        recursive=True,
    )
    view = session.client.bind(view)
    try:
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")
                    ],
                )
            ],
            propSet=[pc.PropertySpec(type=vim.Datastore, pathSet=["name"], all=False)],
        )
        objs = await session.retrieve([spec])
    finally:
        await session.call(view, "DestroyView")
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


async def default_folder_and_pool(
    session: Session, datastore: Any, host: Any | None
) -> tuple[Any, Any]:
    """vmFolder of the datastore's datacenter, and the root pool of the compute resource
    of `host` or else of the first host that mounts the datastore."""
    dc = await datacenter_of(session, datastore)
    folder = session.client.bind((await session.properties(dc, ["vmFolder"]))["vmFolder"])
    if host is None:
        mounts = (await session.properties(datastore, ["host"])).get("host") or []
        if not mounts:
            raise UserError(
                f"datastore {datastore._moId} is mounted by no host; pass --pool or --host", 2
            )
        host = session.client.bind(mounts[0].key)
    compute = session.client.bind((await session.properties(host, ["parent"]))["parent"])
    pool = (await session.properties(compute, ["resourcePool"])).get("resourcePool")
    if pool is None:
        raise UserError(f"host {host._moId} has no resource pool; pass --pool", 2)
    return folder, session.client.bind(pool)
