"""One property read over every object of a type below a container, through a ContainerView
made for the read and destroyed after it (a view left behind costs vCenter memory for the
session's life)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pyVmomi import vim, vmodl

from watcher.session import Session
from watcher.soap import VsphereError
from watcher.traversal import destroy_view

PC = vmodl.query.PropertyCollector


@contextlib.asynccontextmanager
async def container_view(session: Session, container: Any, kind: Any) -> AsyncIterator[Any]:
    """A recursive ContainerView of `kind` (a type or its name) below `container`, destroyed
    on the way out; a failed DestroyView does not cost the read its result."""
    ref = await session.call(
        session.content.viewManager,
        "CreateContainerView",
        container=container,
        type=[kind],
        recursive=True,
    )
    view = session.client.bind(ref)
    try:
        yield view
    finally:
        with contextlib.suppress(VsphereError):
            await destroy_view(session, view)


def view_filter(view: Any, kind: type, paths: Sequence[str]) -> Any:
    """A FilterSpec for `paths` of every object in `view`."""
    return PC.FilterSpec(
        objectSet=[
            PC.ObjectSpec(
                obj=view,
                skip=True,
                selectSet=[PC.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")],
            )
        ],
        propSet=[PC.PropertySpec(type=kind, pathSet=list(paths), all=False)],
    )


async def read_through_view(
    session: Session, container: Any, kind: type, paths: list[str]
) -> list[Any]:
    """The ObjectContents of every `kind` below `container` (recursively), `paths` only."""
    async with container_view(session, container, kind) as view:
        return list(await session.retrieve([view_filter(view, kind, paths)]))
