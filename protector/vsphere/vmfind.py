"""Finding one VM on the live vCenter without reading the whole inventory (issue 18).

`vigil backup VM` used to read every VM with every property and every VM's tags, then
pick one (`vmlookup.find_vm` over `tree.vms()`): 20 ms at a few VMs, minutes at 50,000.
Here each kind of spec asks vCenter for the candidates only, then reads the full
properties of those candidates and their ancestors, and the tags of the one chosen:

- inventory path: SearchIndex.FindByInventoryPath, the managed entity at a slash-separated
  inventory location (vSphere API reference, SearchIndex:
  https://vijava.sourceforge.net/vSphereAPIDoc/ver5/ReferenceGuide/vim.SearchIndex.html;
  govmomi's simulator walks it with FindChild, simulator/search_index.go);
- UUID: SearchIndex.FindByUuid with vmSearch and instanceUuid true: "search for virtual
  machines whose instance UUID matches the given uuid"; without a datacenter "the entire
  inventory is searched" (https://developer.broadcom.com/xapis/virtual-infrastructure-json-
  api/latest/data-structures/FindByUuidRequestType);
- MoRef: the object itself;
- name: a ContainerView of VirtualMachines read for `name` alone.

A candidate's node is built by the same InventoryTree code as the full read (so it is
the same VmNode: path, datacenter, folder, pool, identity), from one RetrievePropertiesEx
that starts at the VM and climbs `parent` (and the VM's resourcePool and parentVApp),
as govmomi's mo.Ancestors does (vim25/mo/ancestors.go: TraversalSpec type ManagedEntity,
path parent, recursive by name). Tags come from one batched
`list-attached-tags-on-objects` naming that VM (watcher.tags).

Where the index's answer is not what the full read would pick, the lookup settles it by
one or two small properties of every VM (never the full set): a path that names no VM, or
that the index resolved through a resource pool or vApp to a VM the tree lists under its
folder, by the VMs of that name; a UUID that is no VM's instance UUID as typed (other
case, or a BIOS UUID, which copied VMs share) by `config.instanceUuid` and `config.uuid`.
An instance UUID identifies one VM (vigil keys every point by it), so
FindByUuid's single answer is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pyVmomi import vim, vmodl

from protector.vsphere.views import container_view, view_filter
from protector.vsphere.vmlookup import MOREF_RE, UUID_RE, VmNotFound, find_vm
from watcher.inventory import read_field_names
from watcher.rawcall import retrieve_parsed
from watcher.session import Session
from watcher.soap import VsphereError
from watcher.tags import TagClient
from watcher.traversal import TYPE_PROPS
from watcher.tree import InventoryTree, VmNode

log = structlog.get_logger(__name__)

PC = vmodl.query.PropertyCollector


@dataclass
class Lookup:
    """The VM found and a tree holding it (with its ancestors and its tags), which the
    policy code takes like the full read's tree."""

    tree: InventoryTree
    node: VmNode


def ancestry_spec(vms: Iterable[Any]) -> Any:
    """A FilterSpec over each VM and every ancestor it names: `parent` up to the root
    folder, and the same climb from its resourcePool and parentVApp."""
    up = PC.TraversalSpec(
        name="up",
        type=vim.ManagedEntity,
        path="parent",
        skip=False,
        selectSet=[PC.SelectionSpec(name="up")],
    )
    pool = PC.TraversalSpec(
        type=vim.VirtualMachine,
        path="resourcePool",
        skip=False,
        selectSet=[PC.SelectionSpec(name="up")],
    )
    vapp = PC.TraversalSpec(
        type=vim.VirtualMachine,
        path="parentVApp",
        skip=False,
        selectSet=[PC.SelectionSpec(name="up")],
    )
    objects = [PC.ObjectSpec(obj=vm, skip=False, selectSet=[up, pool, vapp]) for vm in vms]
    return PC.FilterSpec(
        objectSet=objects,
        propSet=[
            PC.PropertySpec(type=t, pathSet=list(p), all=False) for t, p in TYPE_PROPS.items()
        ],
        reportMissingObjectsInResults=True,  # a VM deleted meanwhile is no fault
    )


async def read_nodes(
    session: Session, vm_morefs: Sequence[str], field_names: dict[int, str]
) -> InventoryTree:
    """A tree of these VMs (those still there and rooted) with their ancestors, no tags."""
    tree = InventoryTree(session.vcenter_uuid, field_names)
    if vm_morefs:
        result = await retrieve_parsed(
            session,
            session.content.propertyCollector,
            [ancestry_spec(session.moref("VirtualMachine", m) for m in vm_morefs)],
        )
        tree.apply(result.objects)
    return tree


async def read_all(session: Session, paths: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(MoRef, {path: value}) of every VM for a few small properties, through a view of
    VirtualMachines alone (made and destroyed for this read)."""
    async with container_view(session, session.content.rootFolder, "VirtualMachine") as view:
        spec = view_filter(view, vim.VirtualMachine, paths)
        result = await retrieve_parsed(session, session.content.propertyCollector, [spec])
    return [(u.obj.value, {c.name: c.val for c in u.changes}) for u in result.objects]


async def indexed(session: Session, spec: str) -> list[str] | None:
    """The MoRef SearchIndex (or the spec itself) gives for `spec`, or None when the
    spec is a name or the index found nothing: then `scanned` decides."""
    idx = session.content.searchIndex
    if spec.startswith("/"):
        ref = await session.call(idx, "FindByInventoryPath", inventoryPath=spec.strip("/"))
    elif UUID_RE.match(spec):
        ref = await session.call(idx, "FindByUuid", uuid=spec, vmSearch=True, instanceUuid=True)
    elif MOREF_RE.match(spec):
        return [spec]
    else:
        return None
    return [ref._moId] if isinstance(ref, vim.VirtualMachine) else None


async def scanned(session: Session, spec: str) -> list[str]:
    """Every VM that may be the one `spec` names, by one or two small properties of all
    VMs: the same name (for a path: its last element), or either UUID in any case."""
    if UUID_RE.match(spec):
        low = spec.lower()
        rows = await read_all(session, ["config.instanceUuid", "config.uuid"])
        return [
            m
            for m, p in rows
            if low
            in (
                str(p.get("config.instanceUuid", "")).lower(),
                str(p.get("config.uuid", "")).lower(),
            )
        ]
    if MOREF_RE.match(spec):
        return [spec]
    return await by_name(session, leaf(spec) if spec.startswith("/") else spec)


def leaf(path: str) -> str:
    """The VM name an inventory path ends in."""
    return path.rstrip("/").rsplit("/", 1)[-1]


async def by_name(session: Session, name: str) -> list[str]:
    return [m for m, p in await read_all(session, ["name"]) if p.get("name") == name]


async def lookup_vm(session: Session, spec: str, *, with_tags: bool = True) -> Lookup:
    """The one VM `spec` (name, inventory path, UUID, MoRef) names, as `vmlookup.find_vm`
    over the full read picks it: the same VmNode, the same VmNotFound / VmAmbiguous.
    `with_tags`: read the chosen VM's tags (a failure is a warning, as in the full read)."""
    spec = spec.strip()
    tags = TagClient(session.endpoint, session.credentials.user, session.credentials.password)
    # The vAPI login and the custom field names are read while the VM is looked up.
    login = asyncio.ensure_future(tags.login()) if with_tags else None
    fields = asyncio.ensure_future(read_field_names(session))
    try:
        morefs = await indexed(session, spec)
        from_index = morefs is not None
        if morefs is None:
            morefs = await scanned(session, spec)
        tree = await read_nodes(session, morefs, await fields)
        try:
            node = find_vm(tree.vms(), spec)
        except VmNotFound:
            if not from_index or MOREF_RE.match(spec):
                raise
            # The index's answer is not what the full read would pick: a path resolved
            # through a resource pool or vApp (the tree lists such a VM under its folder),
            # a VM not yet rooted in the inventory. Settle it as the full read would.
            tree = await read_nodes(session, await scanned(session, spec), await fields)
            node = find_vm(tree.vms(), spec)
        if login is not None:
            node = await with_vm_tags(tags, login, tree, node)
        return Lookup(tree, node)
    finally:
        for task in (login, fields):
            if task is None:
                continue
            task.cancel()  # (no-op when done) and its outcome retrieved: a failed tag
            with contextlib.suppress(BaseException):  # login is no error of a lookup
                await task  # that failed first
        await tags.close()


async def with_vm_tags(
    tags: TagClient, login: asyncio.Future[None], tree: InventoryTree, node: VmNode
) -> VmNode:
    """`node` with its tags (one list-attached-tags-on-objects naming it); unchanged,
    with a warning, when the tagging service fails (policies that select by tag then
    match no VM, as after the full read's tag failure)."""
    try:
        await login
        tree.set_tags(await tags.vm_tags([node.moref]))
    except VsphereError as exc:
        log.warning(
            "inventory.tags_unreadable",
            error=str(exc),
            effect="policies that select by tag match no VM in this read",
        )
        return node
    found = tree.get_vm(node.moref)
    assert found is not None  # set_tags rebuilds the nodes it has, it drops none
    return found


async def closest(session: Session, spec: str, n: int = 3) -> list[str]:
    """For a name or path that matched no VM: the names (for a path: the paths) of the
    VMs whose names are closest to its last element, as `vigil backup` hints them."""
    by: dict[str, list[str]] = {}
    for m, p in await read_all(session, ["name"]):
        by.setdefault(str(p.get("name", "")), []).append(m)
    want = leaf(spec)
    if not spec.startswith("/"):
        return close_to(want, by, n)
    # The paths of the VMs with the closest names, ranked by the whole path.
    near = [m for c in close_to(want, by, 4 * n) for m in by[c]][: 4 * n]
    paths = {v.path: v for v in (await read_nodes(session, near, {})).vms()}
    return close_to(spec.rstrip("/"), paths, n)


def close_to(want: str, pool: Iterable[str], n: int) -> list[str]:
    """As protector.cli.common.did_you_mean picks: difflib's closest, else a shared prefix
    (long names differ from a typo in one character)."""
    import difflib

    ordered = sorted(pool)
    close = difflib.get_close_matches(want, ordered, n=n, cutoff=0.6)
    return close or [c for c in ordered if want and c.startswith(want)][:n]


async def read_vms(session: Session, vm_morefs: Sequence[str]) -> InventoryTree:
    """A tree of these VMs (with their ancestors) and their tags: what `vigil backup --vapp`
    needs of its members, without the whole inventory. A tag read failure is a warning
    (policies that select by tag then match none of them), as in the full read."""
    tree = await read_nodes(session, vm_morefs, await read_field_names(session))
    if not tree.vms():
        return tree
    creds = session.credentials
    tags = TagClient(session.endpoint, creds.user, creds.password)
    try:
        tree.set_tags(await tags.vm_tags(v.moref for v in tree.vms()))
    except VsphereError as exc:
        log.warning(
            "inventory.tags_unreadable",
            error=str(exc),
            effect="policies that select by tag match no VM in this read",
        )
    finally:
        await tags.close()
    return tree
