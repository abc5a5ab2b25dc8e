"""The PropertyCollector filter that covers the whole VM inventory.

The seed's traversal: from the root folder through Folder.childEntity,
Datacenter.vmFolder/hostFolder, ComputeResource.resourcePool,
ResourcePool.resourcePool/vm, VirtualApp.resourcePool/vm (VirtualApp is a
ResourcePool subtype, so the ResourcePool specs reach into vApps too). Hosts are
not collected: the tree needs only the VM's `runtime.host` reference.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

PC = vmodl.query.PropertyCollector

CONTAINER_PROPS = ["name", "parent"]
# What the tree, the policies and the scheduler need; full device config is read
# at backup time only.
VM_PROPS = [
    "name",
    "parent",
    "parentVApp",
    "resourcePool",
    "runtime.powerState",
    "runtime.host",
    "config.instanceUuid",
    "config.uuid",
    "config.template",
    "config.guestId",
    "config.annotation",
    "config.changeTrackingEnabled",
    "capability.changeTrackingSupported",
    "datastore",
    "customValue",
]
TYPE_PROPS: dict[type, list[str]] = {
    vim.Folder: CONTAINER_PROPS,
    vim.Datacenter: CONTAINER_PROPS,
    vim.ComputeResource: CONTAINER_PROPS,  # includes ClusterComputeResource
    vim.ResourcePool: CONTAINER_PROPS,  # includes VirtualApp
    vim.VirtualMachine: VM_PROPS,
}


def _ts(name: str, type_: type, path: str, select: list[str]) -> Any:
    return PC.TraversalSpec(
        name=name,
        type=type_,
        path=path,
        skip=False,
        selectSet=[PC.SelectionSpec(name=s) for s in select],
    )


def traversal_specs() -> list[Any]:
    return [
        _ts("folder", vim.Folder, "childEntity", ["folder", "dcVm", "dcHost", "crPool", "rpPool"]),
        _ts("dcVm", vim.Datacenter, "vmFolder", ["folder"]),
        _ts("dcHost", vim.Datacenter, "hostFolder", ["folder"]),
        _ts("crPool", vim.ComputeResource, "resourcePool", ["rpPool", "rpVm"]),
        _ts("rpPool", vim.ResourcePool, "resourcePool", ["rpPool", "rpVm"]),
        _ts("rpVm", vim.ResourcePool, "vm", []),
    ]


def inventory_filter_spec(root_folder: Any) -> Any:
    """One FilterSpec from the root folder over the whole VM inventory."""
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=root_folder, skip=False, selectSet=traversal_specs())],
        propSet=[
            PC.PropertySpec(type=t, pathSet=list(paths), all=False)
            for t, paths in TYPE_PROPS.items()
        ],
    )
