"""The inventory's plain data: MoRefs, property changes, object updates and `VmNode`.

Pure: no I/O. Kept apart from `tree` so the parser (`fastparse`), the events and the
diffing can share these types without importing the tree itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class MoRef(NamedTuple):
    type: str
    value: str


@dataclass(slots=True)
class Change:
    """One PropertyChange. `val` is plain data: str, bool, int, MoRef, tuples, dicts."""

    name: str
    op: str = "assign"
    val: Any = None


@dataclass(slots=True)
class ObjectUpdate:
    """One ObjectUpdate (`kind` enter/modify/leave) or one ObjectContent (as enter)."""

    kind: str
    obj: MoRef
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class VmNode:
    moref: str
    name: str
    path: str
    folder: str | None
    resource_pool: str | None
    datacenter: str | None
    power_state: str | None
    instance_uuid: str | None
    bios_uuid: str | None
    identity: str
    template: bool
    guest_id: str | None
    annotation: str
    cbt_enabled: bool
    cbt_supported: bool
    host: str | None
    datastores: tuple[str, ...]
    attributes: dict[str, str]
    tags: frozenset[str]
    vapp: str | None
    # Every vApp the VM is in, innermost first: `vapp`, then the vApps it is nested in.
    vapps: tuple[str, ...] = ()

    @property
    def location(self) -> str:
        """The path of the folder or vApp the VM is listed in."""
        return self.path.rsplit("/", 1)[0]


def coalesce(updates: list[ObjectUpdate]) -> list[ObjectUpdate]:
    """Normalize one UpdateSet: drop a `leave` for an object that also `enter`s in it.

    vCenter sends at most one ObjectUpdate per object per update set (a move is one
    `modify` of `parent`). govmomi's own simulator, on a move between folders, sends
    the object's `enter` and `leave` in one set and in scrambled order (enter first);
    the object is present afterwards. (The bundled vcsim moves in place, as vCenter
    does: vcsim/move.go; this stays for other servers of that kind.)
    Apply this per response, never across responses (enter-then-leave across two
    versions is a real create-then-destroy).
    """
    entered = {u.obj.value for u in updates if u.kind == "enter"}
    if not entered:
        return updates
    return [u for u in updates if not (u.kind == "leave" and u.obj.value in entered)]


def apply_changes(props: dict[str, Any], changes: Iterable[Change]) -> None:
    """Apply one object's property changes to its flat property dict."""
    for ch in changes:
        if ch.op in ("remove", "indirectRemove"):
            props.pop(ch.name, None)
            prefix = ch.name + "."
            for k in [k for k in props if k.startswith(prefix)]:
                del props[k]
        elif ch.val is None:
            # An assign without a value: the property is unset.
            props.pop(ch.name, None)
        else:
            props[ch.name] = ch.val


__all__ = ["Change", "MoRef", "ObjectUpdate", "VmNode", "apply_changes", "coalesce"]
