"""vApp sets: the restore points of one vApp backup, grouped by the set record each carries
(config_info["backup"]["group"], written by protector/backup/vapp.py). Pure: manifests in,
sets out.

A set is complete when every expected member (`group.members`, VM MoRefs at backup time)
has a committed point with the set's id. Nothing else marks it complete, so a member whose
backup failed, a process killed half-way, or a member point pruned since all read as
incomplete, naming the missing members (docs/repository-format.md, "vApp sets")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from protector.errors import UserError
from repository import Manifest


@dataclass
class VappSet:
    id: str
    group: dict[str, Any]  # the record of the newest member point
    points: dict[str, Manifest] = field(default_factory=dict)  # VM MoRef -> its point

    @property
    def members(self) -> list[str]:
        return list(self.group.get("members") or [])

    @property
    def missing(self) -> list[str]:
        return [m for m in self.members if m not in self.points]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def created_at(self) -> str:
        return min(_iso(m.started_at) for m in self.points.values())

    def names(self) -> dict[str, str]:
        """MoRef -> name: members by their points, vApps by the saved tree."""
        out = {moref: m.vm.name for moref, m in self.points.items()}
        stack = [self.group.get("tree") or {}]
        while stack:
            node = stack.pop()
            if node.get("moref"):
                out[node["moref"]] = node.get("name", node["moref"])
            for vm, name in (node.get("vm_names") or {}).items():
                out.setdefault(vm, name)
            stack.extend(node.get("children") or [])
        return out

    def record(self) -> dict[str, Any]:
        """The `vigil list --vapps --json` record."""
        names = self.names()
        return {
            "id": self.id,
            "vapp": {
                "name": self.group.get("name"),
                "path": self.group.get("path") or None,
                "moref": self.group.get("moref"),
                "nested_vapps": max(int(self.group.get("vapps") or 1) - 1, 0),
            },
            "created_at": self.created_at,
            "complete": self.complete,
            "members": [
                {
                    "moref": m,
                    "name": names.get(m, m),
                    "point": self.points[m].point_id if m in self.points else None,
                }
                for m in self.members
            ],
            "missing": [{"moref": m, "name": names.get(m, m)} for m in self.missing],
        }


def _iso(dt: Any) -> str:
    return str(dt.isoformat()).replace("+00:00", "Z")


def group_of(m: Manifest) -> dict[str, Any] | None:
    group = ((m.config_info or {}).get("backup") or {}).get("group")
    if isinstance(group, dict) and group.get("kind") == "vapp" and group.get("id"):
        return group
    return None


def vapp_sets(manifests: Iterable[Manifest]) -> list[VappSet]:
    """Every vApp set the points name, newest first."""
    sets: dict[str, VappSet] = {}
    for m in manifests:
        group = group_of(m)
        if group is None:
            continue
        s = sets.setdefault(group["id"], VappSet(group["id"], group))
        s.points[m.vm.moref] = m
    return sorted(sets.values(), key=lambda s: s.created_at, reverse=True)


def find_set(sets: list[VappSet], spec: str) -> VappSet:
    """A set by its id or a unique prefix of it."""
    s = spec.strip().lower()
    found = [v for v in sets if v.id.startswith(s)] if s else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no vApp set {spec!r}; `vigil list --vapps` shows them", 2)
    ids = ", ".join(v.id for v in found[:5])
    raise UserError(f"{spec!r} names several vApp sets ({ids}); give more of the id", 2)
