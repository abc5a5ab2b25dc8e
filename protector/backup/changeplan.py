"""Which areas of a disk a backup must read: the seed's changeId rules, as pure logic.

    previous changeId   snapshot's changeId   read
    none or ""          "uuid/n"              allocated areas (changeId "*")
    any                 "" (CBT not active)   the transport's allocated extents, else all
    "uuidA/n"           "uuidB/m"             allocated areas (tracking was reset)
    "uuidA/n"           "uuidA/m"             areas changed since "uuidA/n"

A FileFault from QueryChangedDiskAreas (or an invalid answer) downgrades an
incremental to a full read of the allocated areas; the caller records why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ReadMode(Enum):
    CHANGED = "changed"  # QueryChangedDiskAreas(previous changeId)
    ALLOCATED_CBT = "allocated-cbt"  # QueryChangedDiskAreas("*")
    ALLOCATED = "allocated"  # the transport's allocated extents, else everything


@dataclass(frozen=True)
class ReadPlan:
    mode: ReadMode
    query_change_id: str | None  # what to pass to QueryChangedDiskAreas
    reason: str

    @property
    def incremental(self) -> bool:
        return self.mode is ReadMode.CHANGED


def tracking_uuid(change_id: str) -> str:
    """The `<UUID>` of a `<UUID>/<nnn>` changeId ("" if it has none)."""
    uuid, sep, _ = change_id.partition("/")
    return uuid if sep else ""


def plan_read(
    previous_change_id: str | None, current_change_id: str, *, force_full: bool
) -> ReadPlan:
    current_change_id = current_change_id or ""
    if not current_change_id:
        return ReadPlan(
            ReadMode.ALLOCATED, None, "changed block tracking is not active on this disk"
        )
    if force_full:
        return ReadPlan(ReadMode.ALLOCATED_CBT, "*", "full backup requested")
    if not previous_change_id:
        return ReadPlan(ReadMode.ALLOCATED_CBT, "*", "no earlier restore point with a changeId")
    if tracking_uuid(previous_change_id) != tracking_uuid(current_change_id):
        return ReadPlan(
            ReadMode.ALLOCATED_CBT,
            "*",
            f"change tracking was reset (changeId {previous_change_id} → {current_change_id})",
        )
    return ReadPlan(ReadMode.CHANGED, previous_change_id, f"changes since {previous_change_id}")


def after_query_fault(plan: ReadPlan, fault: str) -> ReadPlan:
    """An incremental whose query failed becomes a full read of the allocated areas."""
    if plan.mode is ReadMode.CHANGED:
        return ReadPlan(ReadMode.ALLOCATED_CBT, "*", f"QueryChangedDiskAreas failed ({fault})")
    return ReadPlan(ReadMode.ALLOCATED, None, f"QueryChangedDiskAreas('*') failed ({fault})")
