"""One-shot full inventory reads (for `vigil inventory`, resyncs and reconciles)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from .rawcall import retrieve_parsed
from .session import Session
from .soap import VsphereError
from .tags import TagClient
from .traversal import inventory_filter_spec, inventory_view, view_filter_spec
from .tree import InventoryTree

log = structlog.get_logger(__name__)


async def read_field_names(session: Session) -> dict[int, str]:
    """Custom attribute key -> name, from CustomFieldsManager.field ({} without one)."""
    cfm = getattr(session.content, "customFieldsManager", None)
    if cfm is None:
        return {}
    try:
        props = await session.properties(cfm, ["field"])
    except VsphereError as exc:
        log.warning("watcher.custom_fields_unreadable", error=str(exc))
        return {}
    return {int(f.key): str(f.name) for f in props.get("field") or ()}


async def read_snapshot(
    session: Session,
    *,
    collector: Any = None,
    field_names: dict[int, str] | None = None,
    view: Any = None,
) -> InventoryTree:
    """The whole VM inventory via RetrievePropertiesEx, as a fresh tree.

    `view`: an inventory view to read through (the watcher's own); without one, a
    view is made for this read and destroyed after it."""
    pc = collector or session.content.propertyCollector
    names = asyncio.ensure_future(
        read_field_names(session) if field_names is None else _value(field_names)
    )
    root = session.content.rootFolder
    try:
        if view is not None:
            result = await retrieve_parsed(session, pc, [inventory_filter_spec(root, view)])
        else:
            async with inventory_view(session) as own:
                result = await retrieve_parsed(session, pc, [inventory_filter_spec(root, own)])
    except BaseException:
        names.cancel()
        with contextlib.suppress(BaseException):
            await names
        raise
    tree = InventoryTree(session.vcenter_uuid, await names)
    tree.apply(result.objects)
    return tree


async def _value(value: dict[int, str]) -> dict[int, str]:
    return value


async def retrieve_objects(session: Session, type_props: Mapping[type, Sequence[str]]) -> list[Any]:
    """Some properties of every inventory object of the given types (pyvmomi
    ObjectContents), read through a view made and destroyed for this read. Types
    outside the inventory view (hosts, datastores) are not reached."""
    async with inventory_view(session) as view:
        return await session.retrieve(
            [view_filter_spec(session.content.rootFolder, view, type_props)]
        )


async def read_inventory(session: Session, *, tags: TagClient | None = None) -> InventoryTree:
    """One-shot full read of the VM inventory; with `tags`, VM tags are read too."""
    tree = await read_snapshot(session)
    if tags is not None:
        tree.set_tags(await tags.vm_tags(vm.moref for vm in tree.vms()))
    return tree


async def read_inventory_with_tags(session: Session, *, required: bool) -> InventoryTree:
    """The inventory with every VM's tags, read with the session's own credentials.

    Policies can select by tag, so a reader that skips tags sees tag-protected VMs as
    uncovered. `required`: a tag read failure is an error (prune: an uncovered VM loses
    points); otherwise a warning, and the tree comes back without tags."""
    creds = session.credentials
    tags = TagClient(session.endpoint, creds.user, creds.password)
    # The vAPI login (one or two requests) runs while the inventory is read.
    login = asyncio.ensure_future(tags.login())
    try:
        tree = await read_snapshot(session)
    except BaseException:
        login.cancel()
        with contextlib.suppress(BaseException):
            await login
        await tags.close()
        raise
    try:
        await login
        tree.set_tags(await tags.vm_tags(vm.moref for vm in tree.vms()))
    except VsphereError as exc:
        if required:
            raise
        log.warning(
            "inventory.tags_unreadable",
            error=str(exc),
            effect="policies that select by tag match no VM in this read",
        )
    finally:
        await tags.close()
    return tree


__all__ = [
    "read_field_names",
    "read_inventory",
    "read_inventory_with_tags",
    "read_snapshot",
    "retrieve_objects",
]
