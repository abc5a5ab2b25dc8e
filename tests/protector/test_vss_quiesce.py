"""Quiescing against the simulator: a guest that cannot be quiesced (vcsim `-quiesce-fault`)
falls back to a crash-consistent snapshot when the policy allows it and fails cleanly when it
does not; the VSS manifest ESXi names in a quiesced Windows snapshot's backupManifest is saved
with the restore point, and its absence is recorded."""

from __future__ import annotations

import http.client
import io
import random
import zipfile
from typing import Any
from urllib.parse import urlsplit

import pytest

from protector.backup import BackupOptions, backup_vm
from protector.devtools.simulator import Simulator
from watcher.soap import VsphereFault

MIB = 1024 * 1024
VM_NAME = "DC0_H0_VM0"  # quiesce_rig's simulator cannot quiesce this one
HEALTHY = "DC0_H0_VM1"
Rig = Any  # the `rig` / `quiesce_rig` fixtures of conftest.py


def data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def backup(rig: Rig, vm: Any, **kw: Any) -> Any:
    return await backup_vm(rig.ctx, vm, BackupOptions(**kw), path=f"/DC0/vm/{VM_NAME}")


async def test_quiesce_fault_falls_back_to_crash_consistent(quiesce_rig: Rig) -> None:
    rig = quiesce_rig
    content = data(2 * MIB, 1)
    vm = await rig.prepare(2 * MIB, content)
    result = await backup(rig, vm, quiesce=True, quiesce_fallback=True)
    assert result.consistency == "crash"
    saved = rig.repo.load_manifest(result.point_id).config_info["backup"]
    assert saved["consistency"] == "crash"
    assert "ApplicationQuiesceFault" in saved["quiesce_error"]
    assert "could not be quiesced" in saved["quiesce_error"]  # the guest's own message
    assert await rig.snapshots(vm) == []
    out = rig.tmp / "disk.img"
    rig.repo.export_raw(result.point_id, result.disks[0].key, out)
    assert out.read_bytes() == content

    # The fault hits only the VMs the pattern names: another VM quiesces as usual.
    other = await rig.vm(HEALTHY)
    ok = await backup(rig, other, quiesce=True, quiesce_fallback=True)
    assert ok.consistency == "quiesced"
    assert rig.repo.load_manifest(ok.point_id).config_info["backup"]["quiesce_error"] == ""


async def test_quiesce_fault_without_fallback_fails_and_leaves_nothing(quiesce_rig: Rig) -> None:
    rig = quiesce_rig
    vm = await rig.prepare(2 * MIB, data(2 * MIB, 2))
    with pytest.raises(VsphereFault) as err:
        await backup(rig, vm, quiesce=True, quiesce_fallback=False)
    assert err.value.fault_type == "QuiesceFailed"
    msg = str(err.value)
    assert vm._moId in msg and "ApplicationQuiesceFault" in msg
    assert 'on_quiesce_failure is "fail"' in msg
    assert await rig.snapshots(vm) == []
    assert rig.repo.list_points() == []
    # A crash-consistent backup is not refused by the fault layer.
    assert (await backup(rig, vm, quiesce=False)).consistency == "crash"


def test_quiesce_fault_needs_a_session(make_vcsim: Any) -> None:
    """The fault layer answers only logged-in callers; others get the simulator's own fault."""
    sim: Simulator = make_vcsim(args=["-quiesce-fault", "*"])
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        '<soapenv:Body><CreateSnapshot_Task xmlns="urn:vim25">'
        '<_this type="VirtualMachine">vm-1</_this><name>x</name>'
        "<memory>false</memory><quiesce>true</quiesce>"
        "</CreateSnapshot_Task></soapenv:Body></soapenv:Envelope>"
    )
    u = urlsplit(sim.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", u.path, body=body, headers={"Content-Type": "text/xml"})
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 500 and "NotAuthenticated" in text, text[:500]


async def make_windows(rig: Rig, vm: Any) -> None:
    """Make the guest a Windows one, as vSphere sees it (config.guestId)."""
    from pyVmomi import vim

    from watcher.tasks import wait_for_task

    spec = vim.vm.ConfigSpec(guestId="windows9Server64Guest")
    task = await rig.ctx.session.call(vm, "ReconfigVM_Task", spec=spec)
    await wait_for_task(rig.ctx.session, task, description="guestId")


async def test_vss_manifest_is_read_where_backup_manifest_says(rig: Rig) -> None:
    """ESXi names the file `<vm>-vss_manifests<N>.zip` and publishes it in the snapshot
    tree's backupManifest (vcsim writes both for a quiesced Windows guest)."""
    vm = await rig.prepare(2 * MIB, data(2 * MIB, 3))
    await make_windows(rig, vm)
    vm_dir = rig.flat(await rig.disk(vm)).parent  # the snapshot directory is the VM's
    (vm_dir / "vss-manifest.zip").write_bytes(b"PK not ours")  # a name ESXi never writes

    quiesced = await backup(rig, vm, quiesce=True)
    assert quiesced.consistency == "quiesced"
    m = rig.repo.load_manifest(quiesced.point_id)
    assert m.vss_manifest is not None and m.vss_manifest != b"PK not ours"
    written = sorted(vm_dir.glob(f"{VM_NAME}-vss_manifests*.zip"))
    assert len(written) == 1 and written[0].read_bytes() == m.vss_manifest
    with zipfile.ZipFile(io.BytesIO(m.vss_manifest)) as z:
        assert "backupComponents.xml" in z.namelist()
    assert m.config_info["backup"]["vss_manifest"] is True
    assert "vss_manifest_error" not in m.config_info["backup"]
    # `vigil export POINT --vss-manifest -o FILE` hands it back for the guest agent.
    from protector.cli.export import _export_vss

    out = rig.tmp / "vss-manifest.zip"
    assert _export_vss(m, str(out), False) == 0
    assert out.read_bytes() == m.vss_manifest
    assert out.stat().st_mode & 0o777 == 0o600

    # A crash-consistent snapshot has no VSS manifest: a leftover file is not taken for one.
    crash = await backup(rig, vm, quiesce=False)
    assert rig.repo.load_manifest(crash.point_id).vss_manifest is None

    # A guest without VSS (not Windows) leaves none: no manifest, no error.
    other = await rig.vm(HEALTHY)
    none = await backup(rig, other, quiesce=True)
    m = rig.repo.load_manifest(none.point_id)
    assert none.consistency == "quiesced" and m.vss_manifest is None
    assert m.config_info["backup"]["vss_manifest"] is False
    assert "vss_manifest_error" not in m.config_info["backup"]


async def test_a_quiesced_windows_guest_without_manifest_is_recorded(vss_fail_rig: Rig) -> None:
    rig = vss_fail_rig
    vm = await rig.prepare(2 * MIB, data(2 * MIB, 5))
    await make_windows(rig, vm)
    result = await backup(rig, vm, quiesce=True)
    m = rig.repo.load_manifest(result.point_id)
    assert result.consistency == "quiesced" and m.vss_manifest is None
    saved = m.config_info["backup"]
    assert saved["vss_manifest"] is False
    assert "has no backupManifest" in saved["vss_manifest_error"]
    assert await rig.snapshots(vm) == []  # and the backup itself completed


def test_backup_manifest_of_finds_our_node_in_the_tree() -> None:
    from types import SimpleNamespace as N

    from protector.backup.vss import backup_manifest_of

    def node(moref: str, manifest: str, *kids: Any) -> Any:
        return N(snapshot=N(_moId=moref), backupManifest=manifest, childSnapshotList=list(kids))

    tree = N(rootSnapshotList=[node("snapshot-1", "a.zip", node("snapshot-2", "b.zip"))])
    assert backup_manifest_of(tree, "snapshot-2") == "b.zip"
    assert backup_manifest_of(tree, "snapshot-1") == "a.zip"
    assert backup_manifest_of(tree, "snapshot-3") is None
    assert backup_manifest_of(None, "snapshot-1") is None


async def test_a_powered_off_vm_is_powered_off_consistent_not_quiesced(rig: Rig) -> None:
    """vSphere ignores the quiesce flag for a powered-off VM; its disks are at rest."""
    vm = await rig.prepare(2 * MIB, data(2 * MIB, 6))
    await make_windows(rig, vm)
    await rig.power(vm, False)
    result = await backup(rig, vm, quiesce=True)
    saved = rig.repo.load_manifest(result.point_id).config_info["backup"]
    assert result.consistency == saved["consistency"] == "powered-off"
    assert "vss_manifest_error" not in saved  # no guest running: no VSS expected


async def test_an_ignored_quiesce_is_crash_consistent(vss_fail_rig: Rig) -> None:
    """The snapshot task succeeds when VMware Tools are not running, quiesced=false in the
    tree: the point must not claim "quiesced"."""
    rig = vss_fail_rig
    vm = await rig.prepare(2 * MIB, data(2 * MIB, 7), name=HEALTHY)
    result = await backup(rig, vm, quiesce=True)
    saved = rig.repo.load_manifest(result.point_id).config_info["backup"]
    assert result.consistency == saved["consistency"] == "crash"
    assert "without quiescing" in saved["quiesce_error"]


def test_judge_consistency() -> None:
    from types import SimpleNamespace as N

    from protector.backup.consistency import judge

    assert judge("poweredOff", "quiesced", N(quiesced=False)) == ("powered-off", "")
    assert judge("poweredOn", "quiesced", N(quiesced=True)) == ("quiesced", "")
    assert judge("poweredOn", "quiesced", N(quiesced=False))[0] == "crash"
    assert judge("poweredOn", "crash", N(quiesced=False)) == ("crash", "")
    assert judge("poweredOn", "quiesced", None) == ("quiesced", "")


async def test_an_ignored_quiesce_fails_when_the_policy_says_fail(vss_fail_rig: Rig) -> None:
    """on_quiesce_failure = "fail": a snapshot vCenter took without quiescing (no VMware
    Tools, the task still succeeds) must not become a crash-consistent point either."""
    rig = vss_fail_rig
    vm = await rig.prepare(2 * MIB, data(2 * MIB, 8), name=HEALTHY)
    with pytest.raises(VsphereFault) as err:
        await backup(rig, vm, quiesce=True, quiesce_fallback=False)
    assert err.value.fault_type == "QuiesceFailed"
    msg = str(err.value)
    assert vm._moId in msg and "without quiescing" in msg
    assert 'on_quiesce_failure is "fail"' in msg
    assert await rig.snapshots(vm) == []
    assert rig.repo.list_points() == []
    # Powered off, the same policy backs it up: the disks are at rest.
    await rig.power(vm, False)
    off = await backup(rig, vm, quiesce=True, quiesce_fallback=False)
    assert off.consistency == "powered-off"


def test_unquiesced_refusal() -> None:
    from protector.backup.consistency import unquiesced_refusal

    why = "vCenter took the snapshot without quiescing"
    assert unquiesced_refusal("vm-1", True, "crash", why) == ""
    assert "vm-1" in unquiesced_refusal("vm-1", False, "crash", why)
    assert unquiesced_refusal("vm-1", False, "powered-off", "") == ""
    assert unquiesced_refusal("vm-1", False, "quiesced", "") == ""


def test_on_quiesce_failure_reaches_the_backup(tmp_path: Any) -> None:
    from policies import load_policies
    from protector.policyaccess import options_of

    path = tmp_path / "p.toml"
    path.write_text(
        '[[policy]]\nname = "db"\npriority = 1\n[policy.select]\nnames = "db-*"\n'
        '[policy.schedule]\nrpo = "24h"\n[policy.retention]\nkeep_last = 1\n'
        '[policy.backup]\non_quiesce_failure = "fail"\n'
    )
    (p,) = load_policies(path).policies
    assert options_of(p).quiesce_fallback is False
