"""What a restore promises beyond "the bytes arrived": the disk metadata goes on before any
data (VDDK), `--verify` catches a disk that does not read back as the point (chunk hashes),
and a half-built new VM whose verification failed does not stay behind."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

import protector.restore.diskwrite as restore_mod
from protector.errors import UserError
from protector.restore import Placement, restore_as_new, restore_to_existing

MIB = 1024 * 1024
Rig = Any  # the rig fixtures of conftest.py
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")


def data(size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    # Every other MiB zero: a fresh disk skips those writes, verify must still check them.
    return b"".join(rnd.randbytes(MIB) if i % 2 else bytes(MIB) for i in range(size // MIB))


class Spy:
    """Wraps a real disk transport, recording the order of metadata and data writes and
    optionally damaging one write (a disk that silently stores something else)."""

    def __init__(self, inner: Any, calls: list[str], corrupt_offset: int | None) -> None:
        self._inner = inner
        self._calls = calls
        self._corrupt = corrupt_offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write_metadata(self, values: dict[str, str]) -> None:
        self._calls.append("metadata")
        self._inner.write_metadata(values)

    def write(self, offset: int, chunk: bytes) -> None:
        self._calls.append("data")
        if offset == self._corrupt:
            chunk = bytes([chunk[0] ^ 0xFF]) + bytes(chunk[1:])
        self._inner.write(offset, chunk)


def spy_writes(
    monkeypatch: pytest.MonkeyPatch, corrupt_offset: int | None = None, rig: Rig = None
) -> list[str]:
    calls: list[str] = []
    real = restore_mod.open_disk_for_write

    async def opened(ctx: Any, vm: Any, disk: Any, *a: Any, **kw: Any) -> Any:
        if rig is not None:
            # ESXi creates a new disk at its full size; the simulator leaves a 0-byte -flat
            # file, which the fake VixDiskLib would report as the capacity.
            flat = rig.flat(SimpleNamespace(backing=SimpleNamespace(fileName=disk.file_name)))

            if flat.stat().st_size < disk.capacity_bytes:
                os.truncate(flat, disk.capacity_bytes)
        return Spy(await real(ctx, vm, disk, *a, **kw), calls, corrupt_offset)

    monkeypatch.setattr(restore_mod, "open_disk_for_write", opened)
    return calls


def meta_file(rig: Rig, disk: Any) -> Any:
    flat = rig.flat(disk)
    return flat.with_name(flat.name + ".meta")  # where the fake VixDiskLib keeps the keys


async def test_disk_metadata_is_saved_and_written_before_the_data(
    vddk_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = vddk_rig
    size = 4 * MIB
    vm = await rig.prepare(size, data(size, 1))
    meta = {"uuid.image": "6000C29a-1111-2222-3333-444455556666", "ddb.toolsVersion": "12352"}
    meta_file(rig, await rig.disk(vm)).write_text("".join(f"{k}={v}\n" for k, v in meta.items()))

    result = await rig.backup(vm)
    [rec] = rig.repo.load_manifest(result.point_id).disks
    assert dict(rec.metadata) == meta  # read through VixDiskLib at backup

    calls = spy_writes(monkeypatch, rig=rig)
    res = await restore_as_new(rig.ctx, result.point_id, Placement("with-meta"), verify=True)
    assert [d.transport for d in res.disks] == ["vddk"]
    assert calls[0] == "metadata" and "metadata" not in calls[1:], calls
    assert calls.count("data") == 2  # the two non-zero MiB; the new disk reads as zeros
    new_disk = await rig.disk(await rig.vm("with-meta"))
    written = dict(line.split("=", 1) for line in meta_file(rig, new_disk).read_text().splitlines())
    assert written == meta
    assert await rig.read_flat(await rig.vm("with-meta"), size) == data(size, 1)


async def test_verify_catches_a_disk_that_does_not_read_back_as_the_point(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 4 * MIB
    vm = await rig.prepare(size, data(size, 2))
    point = (await rig.backup(vm)).point_id

    spy_writes(monkeypatch, corrupt_offset=3 * MIB)  # one chunk lands damaged
    with pytest.raises(
        UserError, match=r"verification failed.*1 of 4 chunks differ \(chunk 3 \(bytes 3145728\+"
    ) as err:
        await restore_as_new(rig.ctx, point, Placement("damaged"), verify=True)
    assert "destroyed" in str(err.value)  # a VM that is not the point does not stay
    idx = rig.session.content.searchIndex
    gone = await rig.session.call(idx, "FindByInventoryPath", inventoryPath="DC0/vm/damaged")
    assert gone is None

    # Onto the existing VM: the same check, the same refusal to report success.
    with pytest.raises(UserError, match="verification failed"):
        await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True, verify=True)
    monkeypatch.undo()
    res = await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True, verify=True)
    assert [d.verified for d in res.disks] == [True]
    assert await rig.read_flat(vm, size) == data(size, 2)


async def test_a_restore_onto_the_vm_failing_midway_says_its_disks_are_mixed(rig: Rig) -> None:
    """A damaged chunk stops a restore onto the existing VM after some chunks went out: the
    error must say that the VM's disk is now neither the point nor what it was, and what to
    do, not only which chunk was bad."""
    size = 4 * MIB
    vm = await rig.prepare(size, data(size, 3))
    point = (await rig.backup(vm)).point_id
    _m, index = rig.repo.disk_index(point, rig.repo.load_manifest(point).disks[0].key)
    last = index.ids[-1].hex()  # the last non-zero chunk: earlier ones get written first
    (rig.repo.root / "chunks" / last[:2] / last).unlink()

    with pytest.raises(UserError) as err:
        await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True)
    msg = str(err.value)
    assert f"restore of point {point} onto VM DC0_H0_VM0 failed" in msg
    assert f"chunk {last}" in msg  # the cause stays in the message
    assert "do not power it on" in msg and "restore again" in msg
    assert err.value.exit_code == 1


async def test_a_new_name_already_taken_is_refused_before_anything_is_created(rig: Rig) -> None:
    size = 2 * MIB
    vm = await rig.prepare(size, data(size, 4))
    point = (await rig.backup(vm)).point_id
    folder = (await rig.session.properties(vm, ["parent"]))["parent"]

    async def names() -> list[str]:
        kids = (await rig.session.properties(folder, ["childEntity"]))["childEntity"]
        return [(await rig.session.properties(k, ["name"]))["name"] for k in kids]

    before = await names()
    with pytest.raises(UserError, match=r"DC0_H0_VM1.*already.*--new-name") as err:
        await restore_as_new(rig.ctx, point, Placement("DC0_H0_VM1"))
    assert err.value.exit_code == 2
    assert await names() == before  # nothing created (and the existing VM not touched)


async def test_export_is_the_disk_byte_for_byte_with_zero_chunks_as_holes(rig: Rig) -> None:
    size = 8 * MIB
    vm = await rig.prepare(size, data(size, 5))  # every other MiB is zero
    point = (await rig.backup(vm)).point_id
    out = rig.tmp / "disk.img"
    proc = await anyio.run_process(
        [VIGIL, "--config", str(rig.tmp / "vigil.toml"), "export", point, "-o", str(out)],
        check=False,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_bytes() == data(size, 5)
    assert out.stat().st_blocks * 512 <= size // 2 + 64 * 1024  # the zero MiBs are holes


async def test_cancelled_while_vcenter_creates_the_vm_leaves_no_vm_behind(
    slow_create_rig: Rig,
) -> None:
    """Ctrl-C (or a stopped job) while CreateVM_Task still runs: vCenter finishes creating
    the VM anyway. The restore must wait for it and destroy it, then let the cancellation
    through, or an empty VM named like the restore stays in the inventory."""
    import asyncio

    rig = slow_create_rig
    size = 2 * MIB
    vm = await rig.prepare(size, data(size, 6))
    point = (await rig.backup(vm)).point_id
    job = asyncio.ensure_future(restore_as_new(rig.ctx, point, Placement("cancelled-new")))
    await asyncio.sleep(0.7)  # CreateVM_Task is running now
    assert not job.done()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    idx = rig.session.content.searchIndex
    left = await rig.session.call(idx, "FindByInventoryPath", inventoryPath="DC0/vm/cancelled-new")
    assert left is None
