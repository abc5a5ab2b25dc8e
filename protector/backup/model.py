"""What a backup is asked to do (BackupOptions, from the policy) and what it did (per disk
and in all); plain data the CLI prints and the daemon books."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from repository import VmIdentity

Progress = Callable[[int, int], None]  # (bytes done, bytes planned)


@dataclass(frozen=True)
class BackupOptions:
    quiesce: bool = True
    quiesce_fallback: bool = True  # the policy's on_quiesce_failure = "crash-consistent"
    enable_cbt: bool = True
    exclude_disks: tuple[str, ...] = ()  # "scsi0:1"
    transports: tuple[str, ...] | None = None
    # A full backup (`--full`): read every allocated block and check every stored chunk it
    # reuses, healing damage; it trusts no earlier point.
    full: bool = False
    # Read every allocated block (a template: no snapshot to ask CBT about) but reuse the
    # previous point's chunks without reading them back, as an incremental does.
    read_all: bool = False
    policy: str | None = None


@dataclass
class DiskResult:
    key: str
    name: str
    address: str
    capacity_bytes: int
    read_bytes: int = 0
    stored_bytes: int = 0
    change_id: str | None = None
    transport: str = ""
    transport_mode: str = ""  # inside the transport: VDDK's "nbdssl", "hotadd"...
    mode: str = ""
    reason: str = ""
    skipped_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BackupResult:
    point_id: str
    vm: VmIdentity
    type: str  # "full" | "incremental"
    consistency: str
    started_at: datetime
    finished_at: datetime
    disks: list[DiskResult] = field(default_factory=list)
    leftovers_removed: int = 0
    cbt_enabled_now: bool = False
    snapshot_left: str = ""  # why our snapshot is still on the VM ("" when removed)

    @property
    def read_bytes(self) -> int:
        return sum(d.read_bytes for d in self.disks)

    @property
    def stored_bytes(self) -> int:
        return sum(d.stored_bytes for d in self.disks)
