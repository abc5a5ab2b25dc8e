"""Backup and restore of whole VMs against the bundled simulator, end to end over SOAP and
datastore HTTP: snapshots, CBT incrementals, full-read fallbacks, cleanup on failure and
cancellation, restore to the same VM and to a new one, byte for byte."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyVmomi import vim

from protector.errors import UserError
from protector.restore import Placement, restore_as_new, restore_to_existing
from protector.vsphere.snapshots import SNAPSHOT_NAME
from repository import verify
from repository.backend import LocalBackend

BLOCK = 64 * 1024
MIB = 1024 * 1024
Rig = Any  # the `rig` fixture of conftest.py


def patterned(size: int, seed: int = 1) -> bytes:
    """Guest-like bytes: zero runs, repeated text, random data, in 64 KiB blocks (every
    block is distinct, so a misplaced block cannot go unnoticed)."""
    block = 64 * 1024
    rnd = random.Random(seed)
    parts = []
    for i in range(size // block):
        kind = i % 5
        if kind == 0:
            parts.append(bytes(block))
        elif kind in (1, 2):
            line = f"block {i} seed {seed} log line: the quick brown fox {i * 7919}\n".encode()
            parts.append((line * (block // len(line) + 1))[:block])
        else:
            parts.append(rnd.randbytes(block))
    return b"".join(parts)


def mutate(path: Path, size: int, pct: float, seed: int) -> set[int]:
    """Overwrite pct % of the disk in scattered 64 KiB blocks (as a guest would); returns
    the 1 MiB chunk slots touched."""
    rnd = random.Random(seed)
    n = max(1, int(size * pct / 100) // BLOCK)
    blocks = rnd.sample(range(size // BLOCK), n)
    with path.open("r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(rnd.randbytes(BLOCK))
    return {b * BLOCK // MIB for b in blocks}


async def restore_new_and_read(rig: Rig, point: str, name: str, size: int) -> bytes:
    res = await restore_as_new(rig.ctx, point, Placement(name), verify=True)
    assert all(d.verified for d in res.disks)
    return await rig.read_flat(await rig.vm(name), size)


@pytest.mark.parametrize(
    "size", [16 * MIB, pytest.param(256 * MIB, marks=pytest.mark.slow, id="256MiB")]
)
async def test_full_backup_restores_as_new_vm_byte_for_byte(rig: Rig, size: int) -> None:
    data = patterned(size)
    vm = await rig.prepare(size, data)
    result = await rig.backup(vm)
    assert result.type == "full"
    [disk] = result.disks
    assert disk.capacity_bytes == size and disk.transport == "http"
    assert disk.mode == "allocated-cbt"  # CBT was enabled, first point: changeId "*"
    assert await rig.snapshots(vm) == []  # our snapshot is gone
    got = await restore_new_and_read(rig, result.point_id, "restored", size)
    assert got == data


async def test_cbt_incremental_reads_only_changed_chunks(rig: Rig) -> None:
    size = 32 * MIB
    vm = await rig.prepare(size, patterned(size, seed=3))
    first = await rig.backup(vm)
    assert first.disks[0].change_id
    flat = rig.flat(await rig.disk(vm))
    slots = mutate(flat, size, 1, seed=4)
    changed = await rig.read_flat(vm, size)

    second = await rig.backup(vm)
    [d] = second.disks
    assert second.type == "incremental" and d.mode == "changed", d.reason
    assert d.read_bytes == len(slots) * MIB  # the changed chunks, nothing else
    assert d.change_id != first.disks[0].change_id

    out = rig.tmp / "export.img"
    rig.repo.export_raw(second.point_id, d.key, out)
    assert out.read_bytes() == changed
    assert await restore_new_and_read(rig, second.point_id, "incr", size) == changed
    # The full point still restores the disk as it was.
    rig.repo.export_raw(first.point_id, d.key, out, overwrite=True)
    assert out.read_bytes() == patterned(size, seed=3)


async def test_cbt_reset_and_forgotten_change_id_mean_full_reads(rig: Rig) -> None:
    size = 8 * MIB
    vm = await rig.prepare(size, patterned(size, seed=5))
    first = await rig.backup(vm)
    # CBT off and on again: the changeIds get a new UUID part.
    await rig.set_cbt(vm, False)
    reset = await rig.backup(vm)  # turns CBT back on itself
    [d] = reset.disks
    assert reset.cbt_enabled_now and reset.type == "full"
    assert d.mode == "allocated-cbt" and "change tracking was reset" in d.reason
    assert d.change_id.rpartition("/")[0] != first.disks[0].change_id.rpartition("/")[0]
    assert d.read_bytes == size

    # 65 snapshots later the disk has forgotten the saved changeId: FileFault, full read.
    for n in range(65):
        await rig.snapshot(vm, f"other-{n}")
    mutate(rig.flat(await rig.disk(vm)), size, 1, seed=6)
    changed = await rig.read_flat(vm, size)
    # A full read is not a full backup: what the previous point stored is reused without
    # being read back (as an incremental's is), so no chunk is fetched from the repository.
    fetched: list[str] = []
    before = datetime.now(UTC)
    get = rig.repo.backend.get
    rig.repo.backend.get = lambda key: fetched.append(key) or get(key)  # type: ignore[method-assign]
    try:
        forgot = await rig.backup(vm)
    finally:
        del rig.repo.backend.get
    [d] = forgot.disks
    assert d.mode == "allocated-cbt" and "FileFault" in d.reason, d.reason
    assert d.read_bytes == size and forgot.type == "full"
    # ... but for today's share of the rolling check (repository/writer.py recheck_share).
    from repository.writer import _in_share, recheck_share

    shares = {recheck_share(datetime.now(UTC)), recheck_share(before)}  # midnight between
    assert all(
        any(_in_share(bytes.fromhex(k.rsplit("/", 1)[1]), *sh) for sh in shares)
        for k in fetched
        if k.startswith("chunks/")
    ), fetched
    assert d.stored_bytes < size // 4  # the 1 % changed, not the disk again
    assert SNAPSHOT_NAME not in await rig.snapshots(vm)
    rig.repo.export_raw(forgot.point_id, d.key, rig.tmp / "x.img")
    assert (rig.tmp / "x.img").read_bytes() == changed
    # The saved record says why, for `vigil list` and the admin.
    saved = rig.repo.load_manifest(forgot.point_id).config_info["backup"]["disks"][0]
    assert saved["mode"] == "allocated-cbt" and "FileFault" in saved["reason"]


async def test_leftover_snapshot_of_a_killed_run_is_removed(rig: Rig) -> None:
    vm = await rig.prepare(2 * MIB, patterned(2 * MIB))
    await rig.snapshot(vm, "admin-snapshot")
    await rig.snapshot(vm, SNAPSHOT_NAME)  # what a killed backup leaves behind
    result = await rig.backup(vm)
    assert result.leftovers_removed == 1
    assert await rig.snapshots(vm) == ["admin-snapshot"]  # theirs stays


def assert_clean(rig: Rig) -> None:
    assert rig.repo.list_points() == []
    report = verify(rig.repo, read_data=True)
    assert report.ok, report.lines()


async def test_repository_failure_midway_removes_snapshot_and_commits_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 16 * MIB
    vm = await rig.prepare(size, patterned(size, seed=7))
    real_put = LocalBackend.put_if_absent
    stored: list[str] = []

    def failing_put(self: LocalBackend, key: str, data: bytes) -> bool:
        if key.startswith("chunks/"):
            if len(stored) >= 3:
                raise OSError(28, "No space left on device")
            stored.append(key)
        return real_put(self, key, data)

    monkeypatch.setattr(LocalBackend, "put_if_absent", failing_put)
    with pytest.raises(OSError, match="No space left"):
        await rig.backup(vm)
    assert len(stored) == 3  # it failed midway, after some chunks were stored
    assert await rig.snapshots(vm) == []
    assert_clean(rig)
    monkeypatch.setattr(LocalBackend, "put_if_absent", real_put)
    again = await rig.backup(vm)  # the next run works
    assert again.disks[0].read_bytes == size


@pytest.mark.parametrize("how", ["anyio-scope", "task-cancel"])
async def test_cancelled_backup_removes_snapshot_and_commits_nothing(rig: Rig, how: str) -> None:
    import asyncio

    size = 16 * MIB
    vm = await rig.prepare(size, patterned(size, seed=8))
    seen: list[int] = []
    if how == "anyio-scope":
        async with anyio.create_task_group() as tg:

            def progress(done: int, _planned: int) -> None:
                seen.append(done)
                if done >= 2 * MIB:
                    tg.cancel_scope.cancel()

            tg.start_soon(lambda: rig.backup(vm, progress=progress))
    else:

        def progress(done: int, _planned: int) -> None:
            seen.append(done)
            if done >= 2 * MIB:
                task.cancel()  # as the job runner stops a job

        task = asyncio.ensure_future(rig.backup(vm, progress=progress))
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen and max(seen) < size  # cancelled mid-copy
    assert await rig.snapshots(vm) == []
    assert_clean(rig)


async def test_restore_to_existing_vm(rig: Rig) -> None:
    size = 8 * MIB
    data = patterned(size, seed=9)
    vm = await rig.prepare(size, data)
    point = (await rig.backup(vm)).point_id
    rig.flat(await rig.disk(vm)).write_bytes(random.Random(1).randbytes(size))  # garbage

    await rig.power(vm, True)
    with pytest.raises(UserError, match=r"poweredOn.*--power-off"):
        await restore_to_existing(rig.ctx, point, vm)
    assert await rig.read_flat(vm, size) != data  # nothing was written

    res = await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True, verify=True)
    assert res.written_bytes == size  # zeros too: the disk held garbage there
    assert [d.verified for d in res.disks] == [True]
    props = await rig.session.properties(vm, ["runtime.powerState"])
    assert props["runtime.powerState"] == "poweredOff"
    assert await rig.read_flat(vm, size) == data


async def test_disk_of_another_size_is_refused(rig: Rig) -> None:
    vm = await rig.prepare(4 * MIB, patterned(4 * MIB))
    point = (await rig.backup(vm)).point_id
    await rig.grow(vm, 8 * MIB)
    with pytest.raises(UserError, match="sizes must match"):
        await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True)


async def add_independent_disk(rig: Rig, vm: Any) -> None:
    """The simulator (govmomi 0.24.2) cannot hold a physical-mode RDM: its disk layout code
    takes every backing for a flat one and panics. An independent disk is the other kind a
    snapshot cannot include, so it stands in for the skip path here."""
    config = (await rig.session.properties(vm, ["config"]))["config"]
    ctrl = next(
        d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualSCSIController)
    )
    backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName="", diskMode="independent_persistent", thinProvisioned=True
    )
    disk = vim.vm.device.VirtualDisk(
        key=-1, controllerKey=ctrl.key, unitNumber=1, capacityInKB=1024, backing=backing
    )
    change = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
    await rig.run(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(deviceChange=[change]))


async def test_independent_disk_is_skipped_with_its_reason(rig: Rig) -> None:
    size = 4 * MIB
    data = patterned(size, seed=10)
    vm = await rig.prepare(size, data)
    await add_independent_disk(rig, vm)
    result = await rig.backup(vm)
    backed, skipped = sorted(result.disks, key=lambda d: d.skipped_reason is not None)
    assert backed.skipped_reason is None and backed.read_bytes == size
    assert skipped.address == "scsi0:1"
    assert skipped.skipped_reason == "independent disk is not included in snapshots"
    m = rig.repo.load_manifest(result.point_id)
    assert [(s.key, s.reason) for s in m.skipped_disks] == [
        (skipped.key, "independent disk is not included in snapshots")
    ]
    # The point still restores what it holds.
    assert await restore_new_and_read(rig, result.point_id, "no-indep", size) == data


VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")


async def vigil(rig: Rig, *args: str) -> Any:
    import json
    import os

    proc = await anyio.run_process(
        [VIGIL, "--config", str(rig.tmp / "vigil.toml"), *args],
        check=False,
        env=dict(os.environ),
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, (args, out, err[-3000:])
    return json.loads(out) if "--json" in args else out


async def test_cli_backup_list_restore_export_json(rig: Rig) -> None:
    size = 8 * MIB
    data = patterned(size, seed=11)
    vm = await rig.prepare(size, data)
    await add_independent_disk(rig, vm)

    b = await vigil(rig, "backup", "DC0_H0_VM0", "--json")
    assert b["type"] == "full" and b["status"] == "committed"
    assert b["vm"]["path"] == "/DC0/vm/DC0_H0_VM0" and b["read_bytes"] == size

    [p] = await vigil(rig, "list", "DC0_H0_VM0", "--json")
    assert set(p) == {
        "id", "vm", "created_at", "type", "status", "policy", "consistency", "disks", "pinned"
    }  # fmt: skip
    assert p["pinned"] is False
    assert p["id"] == b["id"] and p["type"] == "full" and p["status"] == "committed"
    assert p["consistency"] in ("quiesced", "crash")
    assert set(p["vm"]) == {"name", "path", "instance_uuid", "moref"}
    assert p["vm"]["name"] == "DC0_H0_VM0" and p["vm"]["moref"] == vm._moId
    assert p["created_at"].endswith("Z")
    disk_keys = {
        "key", "name", "capacity_bytes", "read_bytes", "stored_bytes", "change_id",
        "transport", "transport_mode", "skipped_reason",
    }  # fmt: skip
    assert all(set(d) == disk_keys for d in p["disks"])
    [d] = [d for d in p["disks"] if d["skipped_reason"] is None]
    assert d["capacity_bytes"] == size and d["read_bytes"] == size and d["transport"] == "http"
    assert d["transport_mode"] is None  # only VDDK has modes of its own (nbdssl, hotadd...)
    assert d["change_id"] and 0 < d["stored_bytes"] < size
    [s] = [d for d in p["disks"] if d["skipped_reason"]]
    assert "independent" in s["skipped_reason"] and s["capacity_bytes"] == MIB

    r = await vigil(rig, "restore", p["id"], "--new-name", "from-cli", "--verify", "--json")
    assert r["mode"] == "new" and r["vm"]["name"] == "from-cli"
    assert [x["verified"] for x in r["disks"]] == [True]
    assert await rig.read_flat(await rig.vm("from-cli"), size) == data

    out = rig.tmp / "disk.img"
    await vigil(rig, "export", p["id"], "--disk", d["key"], "-o", str(out))
    assert out.read_bytes() == data
    v = await vigil(rig, "verify", "--read-data", "--json")
    assert v["ok"] and v["points_checked"] == 1


async def test_vapp_is_backed_up_as_one_job_with_linked_points(vapp_rig: Rig) -> None:
    from protector.backup import BackupOptions, backup_vapp

    rig = vapp_rig
    idx = rig.session.content.searchIndex
    ref = await rig.session.call(
        idx, "FindByInventoryPath", inventoryPath="DC0/host/DC0_C0/Resources/DC0_C0_APP0"
    )
    vapp = rig.session.client.bind(ref)
    props = await rig.session.properties(vapp, ["vm"])
    members = [rig.session.client.bind(v) for v in props["vm"]]
    assert len(members) == 2
    datas = []
    for n, vm in enumerate(members):
        await rig.grow(vm, 2 * MIB)
        datas.append(patterned(2 * MIB, seed=20 + n))
        await rig.put_flat(vm, datas[-1])

    res = await backup_vapp(rig.ctx, vapp, BackupOptions(quiesce=False))
    assert res.ok and len(res.results) == 2
    manifests = [rig.repo.load_manifest(r.point_id) for r in res.results]
    groups = [m.config_info["backup"]["group"] for m in manifests]
    assert groups[0] == groups[1]
    assert groups[0]["id"] == res.group_id and groups[0]["name"] == "DC0_C0_APP0"
    assert sorted(groups[0]["members"]) == sorted(vm._moId for vm in members)
    assert {m.vm.moref for m in manifests} == {vm._moId for vm in members}
    assert len({m.job_id for m in manifests}) == 1  # one job
    for r, data in zip(res.results, datas, strict=True):
        out = rig.tmp / f"{r.vm.moref}.img"
        rig.repo.export_raw(r.point_id, r.disks[0].key, out)
        assert out.read_bytes() == data


async def test_grown_disk_gets_a_full_read_and_restores_byte_for_byte(rig: Rig) -> None:
    """Regression: growing a disk between two backups failed every later backup (the old,
    smaller index cannot seed an incremental); now the grown disk is read in full."""
    small, big = 4 * MIB, 8 * MIB
    old = patterned(small, seed=30)
    vm = await rig.prepare(small, old)
    first = await rig.backup(vm)
    assert first.disks[0].capacity_bytes == small

    await rig.grow(vm, big)  # ReconfigVM_Task, device edit with a larger capacityInKB
    flat = rig.flat(await rig.disk(vm))
    # The simulator reports the new capacity but leaves the -flat file as it was: the new
    # part reads as zeros (as a freshly grown thin disk does).
    assert flat.stat().st_size == small
    second = await rig.backup(vm)
    [d] = second.disks
    assert d.capacity_bytes == big and second.type == "full" and d.mode != "changed", d.reason
    assert await rig.snapshots(vm) == []
    assert await restore_new_and_read(rig, second.point_id, "grown", big) == old + bytes(small)

    # The guest fills the new space; the next backup is an incremental on the grown index.
    grown = patterned(big, seed=31)
    await rig.put_flat(vm, grown)
    third = await rig.backup(vm)
    assert third.type == "incremental" and third.disks[0].capacity_bytes == big
    assert await restore_new_and_read(rig, third.point_id, "grown2", big) == grown
    # The point from before the growth still restores the small disk.
    out = rig.tmp / "small.img"
    rig.repo.export_raw(first.point_id, d.key, out)
    assert out.read_bytes() == old


async def test_physical_rdm_is_skipped_with_its_reason_and_listed(rdm_rig: Rig) -> None:
    """A VM with a pass-through LUN: the snapshot lists the physical-mode RDM, whose data no
    snapshot holds. The backup skips it with the reason (never the whole VM, never silently),
    `vigil list` shows it, and the point restores as a new VM without it."""
    rig = rdm_rig
    size = 4 * MIB
    data = patterned(size, seed=12)
    vm = await rig.prepare(size, data)
    result = await rig.backup(vm)
    by_key = {d.key: d for d in result.disks}
    assert set(by_key) == {"2099", result.disks[0].key}
    rdm = by_key["2099"]
    assert rdm.address == "scsi0:1" and rdm.read_bytes == 0
    assert rdm.skipped_reason == "physical-mode RDM cannot be snapshotted"
    [backed] = [d for d in result.disks if d.key != "2099"]
    assert backed.read_bytes == size and backed.skipped_reason is None
    assert await rig.snapshots(vm) == []

    [p] = await vigil(rig, "list", "--json")
    [listed] = [d for d in p["disks"] if d["key"] == "2099"]
    assert listed["skipped_reason"] == "physical-mode RDM cannot be snapshotted"
    assert listed["capacity_bytes"] == MIB and listed["read_bytes"] == 0

    res = await restore_as_new(rig.ctx, result.point_id, Placement("no-rdm"), verify=True)
    assert [d.key for d in res.disks] == [backed.key]
    assert any("physical-mode RDM left out" in n for n in res.notes), res.notes
    assert await rig.read_flat(await rig.vm("no-rdm"), size) == data
