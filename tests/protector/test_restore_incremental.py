"""Incremental restore onto the VM a point came from (the seed's "Incremental Restore of
Backup Data"): with CBT on, only the chunks changed since the point are written, the disk
ends byte for byte as the point; whenever CBT cannot tell, everything is written and the
result says why. Also: power on after a restore (both modes), and the CLI for both and for
`vigil backup --vapp`."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from protector.restore import Placement, restore_as_new, restore_to_existing

MIB = 1024 * 1024
BLOCK = 64 * 1024
Rig = Any  # the `rig` / `file_rig` / `vapp_rig` fixtures of conftest.py
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")


def guest_bytes(size: int, seed: int) -> bytes:
    """Random 64 KiB blocks with every third one zero (a guest disk, roughly)."""
    rnd = random.Random(seed)
    return b"".join(
        bytes(BLOCK) if i % 3 == 0 else rnd.randbytes(BLOCK) for i in range(size // BLOCK)
    )


def scribble(path: Path, size: int, pct: float, seed: int, chunk: int) -> set[int]:
    """Overwrite pct % of the disk in scattered 64 KiB blocks; returns the chunk slots hit."""
    rnd = random.Random(seed)
    blocks = rnd.sample(range(size // BLOCK), max(1, int(size * pct / 100) // BLOCK))
    with path.open("r+b") as f:
        for b in blocks:
            f.seek(b * BLOCK)
            f.write(rnd.randbytes(BLOCK))
    return {b * BLOCK // chunk for b in blocks}


async def power_state(rig: Rig, vm: Any) -> str:
    return (await rig.session.properties(vm, ["runtime.powerState"]))["runtime.powerState"]


async def test_changed_only_writes_just_the_changed_chunks(file_rig: Rig) -> None:
    rig = file_rig
    size = 16 * MIB
    chunk = rig.repo.chunk_size
    original = guest_bytes(size, 1)
    vm = await rig.prepare(size, original)
    point = await rig.backup(vm)
    assert point.disks[0].change_id  # CBT is on and the point carries the changeId

    slots = scribble(rig.flat(await rig.disk(vm)), size, 1, seed=2, chunk=chunk)
    assert await rig.read_flat(vm, size) != original
    await rig.power(vm, False)

    res = await restore_to_existing(rig.ctx, point.point_id, vm, changed_only=True, verify=True)
    [d] = res.disks
    assert d.mode == "changed", d.reason
    assert d.written_bytes == len(slots) * chunk  # the touched chunks, no more
    assert len(slots) <= 2 < size // chunk
    assert res.written_bytes == d.written_bytes and d.verified
    assert await rig.read_flat(vm, size) == original
    assert res.as_dict()["disks"][0]["mode"] == "changed"

    # The restore reset CBT (its writes are not in CBT's record): the point's changeId no
    # longer tells what differs, so the next changed-only restore writes everything.
    again = await restore_to_existing(rig.ctx, point.point_id, vm, changed_only=True)
    assert again.disks[0].mode == "full" and again.written_bytes == size
    assert "no changeId" in again.disks[0].reason
    # Without changed_only everything is written, as before.
    full = await restore_to_existing(rig.ctx, point.point_id, vm)
    assert full.disks[0].mode == "full" and full.written_bytes == size


async def test_changed_only_falls_back_to_a_full_write_and_says_why(file_rig: Rig) -> None:
    rig = file_rig
    size = 4 * MIB
    original = guest_bytes(size, 3)
    vm = await rig.prepare(size, original)
    point = (await rig.backup(vm)).point_id
    await rig.power(vm, False)
    flat = rig.flat(await rig.disk(vm))

    async def restore_and_check(expect: str) -> None:
        scribble(flat, size, 5, seed=4, chunk=rig.repo.chunk_size)
        res = await restore_to_existing(rig.ctx, point, vm, changed_only=True)
        [d] = res.disks
        assert d.mode == "full" and expect in d.reason, d.reason
        assert d.written_bytes == size
        assert any(expect in n for n in res.notes), res.notes
        assert await rig.read_flat(vm, size) == original

    # CBT turned off: nothing can say what changed.
    await rig.set_cbt(vm, False)
    await restore_and_check("changed block tracking is off")
    # On again, but no snapshot since: the disk has no changeId yet.
    await rig.set_cbt(vm, True)
    await restore_and_check("has no changeId")
    # After a snapshot the changeIds carry a new tracking UUID: the point's is of no use.
    await rig.snapshot(vm, "admin")
    await restore_and_check("change tracking was reset")


async def test_changed_only_refuses_a_point_of_another_vm(file_rig: Rig) -> None:
    rig = file_rig
    size = 2 * MIB
    original = guest_bytes(size, 5)
    vm = await rig.prepare(size, original)
    point = (await rig.backup(vm)).point_id
    other = await rig.prepare(size, guest_bytes(size, 6), name="DC0_H0_VM1")
    await rig.backup(other)  # CBT on, disk with a changeId of its own
    await rig.power(other, False)
    res = await restore_to_existing(rig.ctx, point, other, changed_only=True)
    assert res.disks[0].mode == "full"
    assert "taken from another VM" in res.disks[0].reason
    assert await rig.read_flat(other, size) == original


async def test_changed_only_over_http_writes_everything_and_says_why(rig: Rig) -> None:
    """The `rig` fixture reads and writes through datastore HTTP only, which cannot write a
    chunk in place: a PUT rewrites the whole disk, so all of it must be sent."""
    size = 4 * MIB
    original = guest_bytes(size, 11)
    vm = await rig.prepare(size, original)
    point = (await rig.backup(vm)).point_id
    scribble(rig.flat(await rig.disk(vm)), size, 2, seed=12, chunk=rig.repo.chunk_size)
    await rig.power(vm, False)
    res = await restore_to_existing(rig.ctx, point, vm, changed_only=True)
    [d] = res.disks
    assert d.mode == "full" and d.written_bytes == size
    assert "http transport rewrites the whole disk" in d.reason and "(http)" in d.reason
    assert await rig.read_flat(vm, size) == original


async def test_power_on_after_restore_in_both_modes(rig: Rig) -> None:
    size = 2 * MIB
    original = guest_bytes(size, 7)
    vm = await rig.prepare(size, original)
    point = (await rig.backup(vm)).point_id

    await rig.power(vm, True)
    res = await restore_to_existing(rig.ctx, point, vm, power_off=True, force=True, power_on=True)
    assert res.powered_on and await power_state(rig, vm) == "poweredOn"
    assert await rig.read_flat(vm, size) == original

    res = await restore_as_new(rig.ctx, point, Placement("copy"), power_on=True)
    new = await rig.vm("copy")
    assert res.powered_on and await power_state(rig, new) == "poweredOn"
    assert await rig.read_flat(new, size) == original


async def vigil(rig: Rig, *args: str, ok: bool = True) -> Any:
    proc = await anyio.run_process(
        [VIGIL, "--config", str(rig.tmp / "vigil.toml"), *args], check=False, env=dict(os.environ)
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert (proc.returncode == 0) == ok, (args, proc.returncode, out, err[-3000:])
    return json.loads(out) if "--json" in args and ok else (out + err)


async def test_cli_restore_changed_only_with_power_on(file_rig: Rig) -> None:
    rig = file_rig
    size = 8 * MIB
    chunk = rig.repo.chunk_size
    original = guest_bytes(size, 8)
    vm = await rig.prepare(size, original)
    point = (await rig.backup(vm)).point_id
    slots = scribble(rig.flat(await rig.disk(vm)), size, 2, seed=9, chunk=chunk)
    await rig.power(vm, True)

    r = await vigil(
        rig, "restore", point, "--to-existing", "--changed-only", "--power-off", "--force",
        "--power-on", "--verify", "--json",
    )  # fmt: skip
    assert r["mode"] == "existing" and r["powered_on"] is True
    [d] = r["disks"]
    assert d["mode"] == "changed" and d["verified"] is True
    assert r["written_bytes"] == d["written_bytes"] == len(slots) * chunk
    assert await power_state(rig, vm) == "poweredOn"
    assert await rig.read_flat(vm, size) == original

    err = await vigil(rig, "restore", point, "--new-name", "x", "--changed-only", ok=False)
    assert "--changed-only applies to --to-existing only" in err


async def test_cli_backup_vapp(vapp_rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = vapp_rig
    monkeypatch.setenv("VIGIL_TEST_VCENTER_PASSWORD", rig.sim.password)  # for `vigil`
    path = "/DC0/host/DC0_C0/Resources/DC0_C0_APP0"
    ref = await rig.session.call(
        rig.session.content.searchIndex, "FindByInventoryPath", inventoryPath=path.strip("/")
    )
    members = (await rig.session.properties(rig.session.client.bind(ref), ["vm"]))["vm"]
    datas = {}
    for n, m in enumerate(members):
        vm = rig.session.client.bind(m)
        await rig.grow(vm, MIB * 2)
        datas[vm._moId] = guest_bytes(2 * MIB, 10 + n)
        await rig.put_flat(vm, datas[vm._moId])

    out = await vigil(rig, "backup", "--vapp", path, "--json")
    assert out["vapp"]["name"] == "DC0_C0_APP0" and out["failures"] == []
    assert sorted(p["vm"]["moref"] for p in out["points"]) == sorted(datas)
    for p in out["points"]:
        # Each point names its VM's inventory path (the simulator files vApp VMs in a folder).
        assert p["vm"]["path"] == f"/DC0/vm/{p['vm']['name']}"
        m = rig.repo.load_manifest(p["id"])
        assert m.config_info["backup"]["group"]["id"] == out["group_id"]
        img = rig.tmp / f"{p['id']}.img"
        rig.repo.export_raw(p["id"], p["disks"][0]["key"], img)
        assert img.read_bytes() == datas[p["vm"]["moref"]]

    err = await vigil(rig, "backup", "--vapp", "/DC0/host/DC0_C0/Resources/nope", ok=False)
    assert "no vApp at inventory path" in err
    err = await vigil(rig, "backup", "DC0_H0_VM0", "--vapp", path, ok=False)
    assert "only one of these, not several" in err and "--vapp" in err
