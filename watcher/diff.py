"""The events between two states of a VM, or of two VM sets. Pure: no I/O.

See `watcher.tree`'s docstring for which field change becomes which event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from .events import VmAdded, VmChanged, VmEvent, VmMoved, VmRemoved, VmRenamed
from .model import VmNode

# Reported by VmRenamed/VmMoved rather than VmChanged (and `folder`/`vapp` too when
# they are the location that moved).
_CHANGE_FIELDS = tuple(f.name for f in fields(VmNode) if f.name not in ("name", "path"))


def diff_vm(old: VmNode, new: VmNode) -> list[VmEvent]:
    """Events turning `old` into `new` (same VM)."""
    events: list[VmEvent] = []
    if old.name != new.name:
        events.append(VmRenamed(new, old.name, new.name))
    moved = old.location != new.location
    if moved:
        events.append(VmMoved(new, old.path, new.path))
    changes = {
        f: (getattr(old, f), getattr(new, f))
        for f in _CHANGE_FIELDS
        if getattr(old, f) != getattr(new, f)
    }
    if moved:
        for f in ("folder", "vapp"):
            if f in changes and changes[f] == (
                old.location if getattr(old, f) else None,
                new.location if getattr(new, f) else None,
            ):
                del changes[f]
    if changes:
        events.append(VmChanged(new, changes))
    return events


def diff_by_identity(old: Mapping[str, VmNode], new: Mapping[str, VmNode]) -> list[VmEvent]:
    """The events between two VM sets (keyed by MoRef), matching VMs by identity.

    Identities that occur more than once on a side (clones sharing a BIOS uuid) are
    matched by MoRef within the group.
    """
    old_groups: dict[str, list[VmNode]] = {}
    new_groups: dict[str, list[VmNode]] = {}
    for vm in old.values():
        old_groups.setdefault(vm.identity, []).append(vm)
    for vm in new.values():
        new_groups.setdefault(vm.identity, []).append(vm)
    events: list[VmEvent] = []
    for ident in old_groups.keys() | new_groups.keys():
        olds = old_groups.get(ident, [])
        news = new_groups.get(ident, [])
        if len(olds) == 1 and len(news) == 1:
            if olds[0] != news[0]:
                events.extend(diff_vm(olds[0], news[0]))
            continue
        by_moref = {vm.moref: vm for vm in news}
        for o in olds:
            n = by_moref.pop(o.moref, None)
            if n is None:
                events.append(VmRemoved(o))
            elif n != o:
                events.extend(diff_vm(o, n))
        events.extend(VmAdded(n) for n in by_moref.values())
    return events


__all__ = ["diff_by_identity", "diff_vm"]
