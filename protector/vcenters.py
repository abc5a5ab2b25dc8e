"""Several vCenters (`[vcenters.NAME]`) as the commands see them: which configured name a
VM's identity belongs to, how a VM is shown when more than one is configured, and reading
every vCenter's inventory at once (prune and `policy check` must see all of them: a VM of
a vCenter left unread would look like an orphan)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from protector.config import Config


def shown_path(cfg: Config, vcenter: str, path: str) -> str:
    """An inventory path for output: with several vCenters it carries the vCenter's name
    (`east:/DC0/vm/web-1`, the way scp writes host:path), else it is the path alone."""
    return f"{vcenter}:{path}" if cfg.several_vcenters else path


class VcenterNames:
    """The configured name of each vCenter instance uuid, learned from its sessions (the
    uuid comes from vCenter, the name from vigil.toml)."""

    def __init__(self) -> None:
        self.by_uuid: dict[str, str] = {}

    def learn(self, uuid: str, name: str) -> None:
        if uuid:
            self.by_uuid[uuid] = name

    def of_identity(self, identity: str) -> str:
        """The name of the vCenter a VM identity ("vcuuid/instanceuuid") belongs to."""
        return self.by_uuid.get(identity.split("/", 1)[0], "")

    def of(self, node: Any) -> str:
        return self.of_identity(node.identity)

    def as_mapping(self) -> Mapping[str, str]:
        return self.by_uuid


async def read_trees(cfg: Config, *, tags_required: bool) -> dict[str, Any]:
    """Every configured vCenter's inventory (with tags), by name, read concurrently; a
    vCenter that cannot be read stops the command (the UserError of open_session)."""
    from protector.vsphere.connect import open_session
    from watcher.inventory import read_inventory_with_tags

    async def one(name: str) -> Any:
        session = await open_session(cfg.for_vcenter(name))
        try:
            return await read_inventory_with_tags(session, required=tags_required)
        finally:
            await session.close()

    trees = await asyncio.gather(*(one(n) for n in cfg.vcenters))
    return dict(zip(cfg.vcenters, trees, strict=True))
