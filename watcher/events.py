"""Typed inventory events, emitted by `InventoryTree` and streamed by the `Watcher`.

Every event carries the VM as it is *after* the change (`VmRemoved`: as it was).
The tree is already consistent with the event when the event is emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import VmNode


@dataclass(frozen=True)
class VmAdded:
    vm: VmNode

    def describe(self) -> dict[str, Any]:
        return {"event": "added", "path": self.vm.path}


@dataclass(frozen=True)
class VmRemoved:
    vm: VmNode

    def describe(self) -> dict[str, Any]:
        return {"event": "removed", "path": self.vm.path}


@dataclass(frozen=True)
class VmRenamed:
    vm: VmNode
    old_name: str
    new_name: str

    def describe(self) -> dict[str, Any]:
        return {"event": "renamed", "old_name": self.old_name, "new_name": self.new_name}


@dataclass(frozen=True)
class VmMoved:
    """The VM's location changed: its parent folder (or vApp) moved, was renamed, or
    the VM was moved into another one. A plain VM rename is a `VmRenamed` only."""

    vm: VmNode
    old_path: str
    new_path: str

    def describe(self) -> dict[str, Any]:
        return {"event": "moved", "old_path": self.old_path, "new_path": self.new_path}


@dataclass(frozen=True)
class VmChanged:
    """Other fields changed: `changes` maps the VmNode field name to (old, new)."""

    vm: VmNode
    changes: dict[str, tuple[Any, Any]]

    def describe(self) -> dict[str, Any]:
        return {"event": "changed", "changes": {k: list(v) for k, v in self.changes.items()}}


VmEvent = VmAdded | VmRemoved | VmRenamed | VmMoved | VmChanged


def event_to_json(event: VmEvent) -> dict[str, Any]:
    """A JSON-ready dict for one event (for `vigil inventory --watch --json`)."""
    out: dict[str, Any] = {
        "moref": event.vm.moref,
        "identity": event.vm.identity,
        "name": event.vm.name,
    }
    described = event.describe()
    if "changes" in described:
        described["changes"] = {
            k: [_jsonable(x) for x in v] for k, v in described["changes"].items()
        }
    out.update(described)
    if "path" not in out:
        out["path"] = event.vm.path
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return value


__all__ = ["VmAdded", "VmChanged", "VmEvent", "VmMoved", "VmRemoved", "VmRenamed", "event_to_json"]
