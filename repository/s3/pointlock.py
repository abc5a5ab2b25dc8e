"""Object lock for a restore point being committed: which objects it references, split
into those taken over from its base point and those its changed slots brought in, handed
to the backend's retain_point (retention.py explains the generations). Backends without
object lock (no `retain_point`) cost nothing here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from repository.codec import chunk_key

if TYPE_CHECKING:
    from repository.manifest import DiskRecord, Manifest
    from repository.repo import Repository


def _index_keys(repo: Repository, index_id: str) -> set[str]:
    from repository.objects import index_key

    return {index_key(index_id)} | {chunk_key(c) for c in repo.load_index(index_id).referenced()}


def retain_new_point(
    repo: Repository, previous: Manifest | None, disks: Sequence[DiskRecord]
) -> int:
    """Call before the manifest is written; returns the retention calls made. The config
    and key slots count as taken over: without them no point can be opened."""
    backend = repo.backend
    retain = getattr(backend, "retain_point", None)
    if retain is None or getattr(backend, "retention", None) is None:
        return 0
    old: set[str] = set()
    if previous is not None:
        for d in previous.disks:
            old |= _index_keys(repo, d.index_id)
    new: set[str] = set()
    for d in disks:
        new |= _index_keys(repo, d.index_id)
    always = {"config"} | {i.key for i in backend.list("keys/")}
    base_time = previous.committed_at if previous is not None else None
    return int(retain((new & old) | always, new - old, base_time))
