"""One property read over every object of a type below a container, through a ContainerView
made for the read and destroyed after it (a view left behind costs vCenter memory for the
session's life)."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from watcher.session import Session


async def read_through_view(
    session: Session, container: Any, kind: type, paths: list[str]
) -> list[Any]:
    """The ObjectContents of every `kind` below `container` (recursively), `paths` only."""
    view = await session.call(
        session.content.viewManager,
        "CreateContainerView",
        container=container,
        type=[kind],
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
            propSet=[pc.PropertySpec(type=kind, pathSet=paths, all=False)],
        )
        return list(await session.retrieve([spec]))
    finally:
        await session.call(view, "DestroyView")
