"""backup_vm's `before_commit` hook: the cluster's epoch check runs after the snapshot is
removed and right before the manifest is written; when it refuses, nothing is committed."""

from __future__ import annotations

import os
from typing import Any

import pytest
from daemon.helpers import our_snapshots

from cluster.fencing import StaleEpochError
from protector.backup import BackupOptions, backup_vm

MIB = 1024 * 1024


async def test_a_refused_fence_commits_nothing_and_leaves_no_snapshot(rig: Any) -> None:
    vm = await rig.prepare(8 * MIB, os.urandom(8 * MIB))
    seen: list[int] = []

    async def deposed() -> None:
        seen.append(len(await our_snapshots(rig.session, vm)))
        raise StaleEpochError("vc-1", 1, 2)

    opts = BackupOptions(quiesce=False)
    with pytest.raises(StaleEpochError):
        await backup_vm(rig.ctx, vm, opts, path="/DC0/vm/DC0_H0_VM0", before_commit=deposed)
    assert seen == [0], "the fence runs once, after the snapshot is gone"
    assert rig.repo.manifests() == []
    assert await our_snapshots(rig.session, vm) == []

    async def current() -> None:
        seen.append(-1)

    res = await backup_vm(rig.ctx, vm, opts, path="/DC0/vm/DC0_H0_VM0", before_commit=current)
    assert seen == [0, -1]
    assert [m.point_id for m in rig.repo.manifests()] == [res.point_id]
