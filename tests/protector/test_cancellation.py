"""Cancelling a backup (Task.cancel(), as the job runner and the daemon's shutdown do) at
the awkward moments: while a quiesced snapshot is faulting, and mid-read with the
cancellation repeated during cleanup. The cancellation must get through (no retry, no
crash-consistent fallback, no point), and the cleanup must finish before the backup returns:
snapshot removed, disk handles closed, the repository lock released."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from protector.backup import BackupOptions, backup_vm
from repository import verify

MIB = 1024 * 1024
Rig = Any  # the rig fixtures of conftest.py


def data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_cancel_while_quiesced_snapshot_faults_gets_through(
    quiesce_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job is cancelled while vCenter is still creating a quiesced snapshot that then
    faults (the guest cannot quiesce): the cancellation must not be swallowed by the fault
    handling, which would retry and fall back to a crash-consistent snapshot."""
    rig = quiesce_rig
    vm = await rig.prepare(2 * MIB, data(2 * MIB, 1))
    session = rig.session
    real_call = session.call
    snapshot_calls: list[bool] = []

    async def call(obj: Any, method: str, **kw: Any) -> Any:
        result = await real_call(obj, method, **kw)
        if method == "CreateSnapshot_Task":
            snapshot_calls.append(kw["quiesce"])
            job.cancel()  # lands while the snapshot task is being waited for
        return result

    monkeypatch.setattr(session, "call", call)
    opts = BackupOptions(quiesce=True, quiesce_fallback=True)
    job = asyncio.ensure_future(backup_vm(rig.ctx, vm, opts, path="/DC0/vm/DC0_H0_VM0"))
    with pytest.raises(asyncio.CancelledError):
        await job
    monkeypatch.setattr(session, "call", real_call)
    assert snapshot_calls == [True]  # no retry, no crash-consistent fallback
    assert await rig.snapshots(vm) == []
    assert rig.repo.list_points() == []


async def test_cancel_mid_read_closes_handles_before_returning(
    vddk_rig: Rig, fake_vddk: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled mid-read, and cancelled again and again while cleaning up (a job runner
    stopping a job, then the daemon shutting down): when the backup returns, the VDDK handle
    is closed, the repository lock released, the snapshot removed and no point committed."""
    from protector_helpers import vddk_open_handles

    rig = vddk_rig
    size = 16 * MIB
    vm = await rig.prepare(size, data(size, 2))
    monkeypatch.setenv("FAKEVDDK_SLOW_READ_US", "2000")  # reads slow enough to cancel mid-way
    seen: list[int] = []
    midway = asyncio.Event()

    def progress(done: int, _planned: int) -> None:
        seen.append(done)
        if done >= 2 * MIB:
            midway.set()

    async def keep_cancelling() -> None:
        await midway.wait()
        while not job.done():
            job.cancel()
            await asyncio.sleep(0)

    hammer = asyncio.ensure_future(keep_cancelling())
    job = asyncio.ensure_future(rig.backup(vm, progress=progress))
    with pytest.raises(asyncio.CancelledError):
        await job
    # Checked before anything else runs on the loop: the cleanup must be complete already.
    open_handles = vddk_open_handles(fake_vddk)
    rig.repo.lock(exclusive=True, timeout=0).release()  # busy while a backup holds it
    await hammer
    assert seen and max(seen) < size
    assert open_handles == 0
    assert await rig.snapshots(vm) == []
    assert rig.repo.list_points() == []
    assert verify(rig.repo, read_data=True).ok
