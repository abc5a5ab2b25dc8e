"""What the daemon knows of each VM's restore points: the newest good one, how many, the
last error. Rebuilt from the repository's manifests at start (so a restart never repeats a
backup still within its RPO), updated as jobs finish. Pure: no I/O here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def identity_key(vcenter_uuid: str, instance_uuid: str) -> str:
    """The watcher's VmNode.identity for a VM a manifest names."""
    return f"{vcenter_uuid}/{instance_uuid}"


@dataclass
class VmState:
    newest_good: datetime | None = None
    newest_point: str | None = None
    points: int = 0
    last_error: str = ""


def states_from(manifests: Iterable[Any]) -> dict[str, VmState]:
    """Identity key → VmState, from the repository's manifests."""
    state: dict[str, VmState] = {}
    for m in manifests:
        st = state.setdefault(identity_key(m.vm.vcenter_uuid, m.vm.instance_uuid), VmState())
        st.points += 1
        if st.newest_good is None or m.committed_at > st.newest_good:
            st.newest_good, st.newest_point = m.committed_at, m.point_id
    return state
