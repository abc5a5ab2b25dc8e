"""What a restore did, per disk and in all (the CLI prints it, --json as is)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Progress = Callable[[int, int], None]


@dataclass
class RestoredDisk:
    key: str
    target: str
    capacity_bytes: int
    written_bytes: int = 0
    skipped_zero_bytes: int = 0
    transport: str = ""
    verified: bool | None = None
    mode: str = "full"  # "full" | "changed" (only the chunks changed since the point)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RestoreResult:
    point_id: str
    vm_moref: str
    vm_name: str
    mode: str  # "existing" | "new"
    disks: list[RestoredDisk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    powered_on: bool = False

    @property
    def written_bytes(self) -> int:
        return sum(d.written_bytes for d in self.disks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "point_id": self.point_id,
            "vm": {"moref": self.vm_moref, "name": self.vm_name},
            "mode": self.mode,
            "written_bytes": self.written_bytes,
            "disks": [d.as_dict() for d in self.disks],
            "notes": self.notes,
            "powered_on": self.powered_on,
        }
