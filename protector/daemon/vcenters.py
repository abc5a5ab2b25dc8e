"""The daemon's vCenters: one watcher and one jobs' session per configured vCenter
(`[vcenters.NAME]`, or the lone `[vcenter]`), each VM tied to its own through its identity
(`vcenter-uuid/instance-uuid`). Each vCenter syncs, reconnects and fails on its own: one
that is down never holds back the others' planning or backups, only the daily prune (which
must see every VM before it may call one an orphan) and `healthy` (the status says which).

`VcenterSet` also stands in for the single watcher the daemon had (`tree`, `healthy`,
`lag_seconds`), so the planner, pruner and status views see one inventory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from protector.config import Config
from protector.daemon.sessions import JobSessions
from protector.vcenters import VcenterNames
from watcher.session import Session
from watcher.updates import Watcher


@dataclass
class VcenterLink:
    name: str
    cfg: Config  # the daemon's configuration aimed at this vCenter (cfg.vcenter is it)
    sessions: JobSessions
    watcher: Watcher | None = None
    # Set once its first complete tree is evaluated (the daemon's per-vCenter initial sync).
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def uuid(self) -> str:
        return self.watcher.tree.vcenter_uuid if self.watcher else ""


class VcenterSet:
    def __init__(self, cfg: Config, names: Iterable[str] | None = None) -> None:
        self.names = VcenterNames()
        self.several = cfg.several_vcenters
        self.links: list[VcenterLink] = []
        for name in names if names is not None else cfg.vcenters:
            one = cfg.for_vcenter(name)
            self.links.append(VcenterLink(name, one, JobSessions(one, self.names)))

    def make_watchers(self, make: Callable[[Callable[[], Any]], Watcher]) -> None:
        """One watcher per vCenter, each logging in with its own vCenter's session."""
        for link in self.links:
            link.watcher = make(link.sessions.connect)

    # -- one VM's vCenter ---------------------------------------------------------------

    def link_of(self, identity: str) -> VcenterLink | None:
        """The VM's vCenter: by the uuid its watcher's tree has, or that one of its
        sessions learned at login (a worker without watchers)."""
        uuid = identity.split("/", 1)[0]
        found = next((lk for lk in self.links if lk.uuid == uuid), None)
        name = self.names.by_uuid.get(uuid)
        return found or next((lk for lk in self.links if lk.name == name), None)

    def name_of(self, node: Any) -> str:
        """The configured name of a node's vCenter (a policy's `vcenters`)."""
        link = self.link_of(node.identity)
        return link.name if link else self.names.of(node)

    def shown_path(self, node: Any) -> str:
        """The path for output: `NAME:/DC0/vm/web-1` when several vCenters are configured."""
        return f"{self.name_of(node)}:{node.path}" if self.several else node.path

    async def session_for(self, identity: str) -> Session:
        """The jobs' session of the VM's vCenter. A cluster worker has no watchers: it
        learns which vCenter has which uuid by logging in to those it does not know yet."""
        link = self.link_of(identity)
        for other in self.links:
            if link is not None:
                break
            if other.sessions.current is None:
                await other.sessions.session()
                link = self.link_of(identity)
        if link is None:
            uuid = identity.split("/", 1)[0]
            raise LookupError(
                f"the VM {identity} is on vCenter {uuid}, which is none of those configured "
                f"({', '.join(lk.name for lk in self.links)})"
            )
        return await link.sessions.session()

    # -- the watcher the daemon had, over all of them ------------------------------------

    @property
    def tree(self) -> VcenterSet:
        return self

    def vms(self) -> list[Any]:
        return [v for lk in self.links if lk.watcher for v in lk.watcher.tree.vms()]

    def tree_of(self, identity: str) -> Any:
        """The inventory tree of the VM's own vCenter (MoRefs are unique only within it)."""
        link = self.link_of(identity)
        return link.watcher.tree if link and link.watcher else None

    def find_vm_by_identity(self, identity: str) -> Any:
        link = self.link_of(identity)
        return link.watcher.tree.find_vm_by_identity(identity) if link and link.watcher else None

    def get_vm(self, ref: str) -> Any:
        """A VM by identity, or by MoRef when only one vCenter could hold it (a MoRef is
        unique within one vCenter only)."""
        node = self.find_vm_by_identity(ref)
        if node is not None:
            return node
        found = [v for lk in self.links if lk.watcher and (v := lk.watcher.tree.get_vm(ref))]
        return found[0] if len(found) == 1 else None

    @property
    def healthy(self) -> bool:
        """Every vCenter connected and its inventory live."""
        return all(lk.watcher is not None and lk.watcher.healthy for lk in self.links)

    @property
    def lag_seconds(self) -> float | None:
        lags = [lk.watcher.lag_seconds for lk in self.links if lk.watcher]
        known = [x for x in lags if x is not None]
        return max(known) if len(known) == len(lags) and known else None

    def in_sync(self) -> bool:
        """Every vCenter's first tree evaluated and its inventory live (prune's condition)."""
        return all(lk.synced.is_set() for lk in self.links) and self.healthy

    async def close_watchers(self) -> None:
        for lk in self.links:
            if lk.watcher is not None:
                await lk.watcher.close()

    async def close_sessions(self) -> None:
        for lk in self.links:
            await lk.sessions.close()

    async def close(self) -> None:
        await self.close_watchers()
        await self.close_sessions()

    def status(self) -> list[dict[str, Any]]:
        """Per vCenter: connected, in sync, VM count and lag (status page, `vigil status`)."""
        out = []
        for lk in self.links:
            w = lk.watcher
            out.append(
                {
                    "name": lk.name,
                    "url": lk.cfg.vcenter.url,
                    "connected": bool(w and w.healthy),
                    "synced": lk.synced.is_set(),
                    "vms": len(w.tree.vms()) if w else 0,
                    "inventory_lag_seconds": w.lag_seconds if w else None,
                }
            )
        return out
