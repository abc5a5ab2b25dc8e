"""Restore as a new VM puts each disk back on its own datastore, follows --datastore-map and
--network-map, looks names up in the target datacenter, and runs the VM on a host that is
connected, out of maintenance and mounts every datastore it needs (issue 14 item 8)."""

from __future__ import annotations

import http.client
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from pyVmomi import vim

from protector.errors import UserError
from protector.restore import Placement, restore_as_new
from protector.restore.placing import choose_host, original_gone, parse_mapping
from protector.vsphere.placement import HostFacts
from tests.protector.conftest import PASSWORD_ENV, open_rig
from watcher.soap import VsphereConnectionError, VsphereFault

MIB = 1024 * 1024
D = vim.vm.device
Rig = Any


@pytest.fixture
async def ds2_rig(
    make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """Two datastores (LocalDS_0, LocalDS_1), both mounted by every host."""
    sim = make_vcsim(args=["-ds", "2"])
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r


async def add_disk(rig: Rig, vm: Any, datastore: str, size: int) -> None:
    first = await rig.disk(vm)
    disk = D.VirtualDisk(
        key=-1,
        controllerKey=first.controllerKey,
        unitNumber=1,
        capacityInKB=size // 1024,
        backing=D.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
        ),
    )
    change = D.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
    await rig.run(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(deviceChange=[change]))


async def enter_maintenance(rig: Rig, host: Any) -> None:
    """EnterMaintenanceMode_Task over raw SOAP: its required `timeout` parameter has the
    name Session.call keeps for its own HTTP timeout."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        '<soapenv:Body><EnterMaintenanceMode_Task xmlns="urn:vim25">'
        f'<_this type="HostSystem">{host._moId}</_this><timeout>0</timeout>'
        "</EnterMaintenanceMode_Task></soapenv:Body></soapenv:Envelope>"
    )
    u = urlsplit(rig.sim.url)

    def post() -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            conn.request(
                "POST",
                u.path,
                body=body,
                headers={
                    "Content-Type": "text/xml",
                    "SOAPAction": '"urn:vim25/6.5"',
                    "Cookie": f"vmware_soap_session={rig.session.session_cookie}",
                },
            )
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
        finally:
            conn.close()

    await anyio.to_thread.run_sync(post)
    deadline = time.monotonic() + 30  # a bound on a broken simulator, not a timing goal
    while time.monotonic() < deadline:
        props = await rig.session.properties(host, ["runtime.inMaintenanceMode"])
        if props.get("runtime.inMaintenanceMode"):
            return
        await anyio.sleep(0.05)
    raise AssertionError("the host did not enter maintenance mode")


def datastores_of(disks: list[Any]) -> list[str]:
    return [d.backing.fileName[1:].split("]", 1)[0] for d in disks]


async def test_each_disk_goes_back_to_its_own_datastore(ds2_rig: Rig) -> None:
    rig = ds2_rig
    vm = await rig.prepare(2 * MIB, random.Random(1).randbytes(2 * MIB))
    await add_disk(rig, vm, "LocalDS_1", MIB)
    assert datastores_of(await rig.disks(vm)) == ["LocalDS_0", "LocalDS_1"]
    point = (await rig.backup(vm)).point_id

    await restore_as_new(rig.ctx, point, Placement("copy"))
    assert datastores_of(await rig.disks(await rig.vm("copy"))) == ["LocalDS_0", "LocalDS_1"]

    mapped = Placement("copy2", datastore_map={"LocalDS_1": "LocalDS_0"})
    await restore_as_new(rig.ctx, point, mapped)
    assert datastores_of(await rig.disks(await rig.vm("copy2"))) == ["LocalDS_0", "LocalDS_0"]

    # --datastore sends everything to one datastore; a map entry still wins over it.
    both = Placement("copy3", datastore="LocalDS_1", datastore_map={"LocalDS_0": "LocalDS_0"})
    await restore_as_new(rig.ctx, point, both)
    copy3 = await rig.vm("copy3")
    assert datastores_of(await rig.disks(copy3)) == ["LocalDS_0", "LocalDS_1"]
    vmx = (await rig.session.properties(copy3, ["config.files.vmPathName"]))[
        "config.files.vmPathName"
    ]
    assert vmx.startswith("[LocalDS_0]")

    with pytest.raises(UserError, match="'nope' not found in the target datacenter"):
        await restore_as_new(rig.ctx, point, Placement("x", datastore_map={"LocalDS_1": "nope"}))


async def test_network_map_moves_the_adapters(rig: Rig) -> None:
    vm = await rig.vm()
    point = (await rig.backup(vm)).point_id
    config = (await rig.session.properties(vm, ["config"]))["config"]
    (nic,) = [d for d in config.hardware.device if isinstance(d, D.VirtualEthernetCard)]
    assert isinstance(nic.backing, D.VirtualEthernetCard.DistributedVirtualPortBackingInfo)

    placement = Placement("moved", network_map={"DC0_DVPG0": "VM Network"})
    await restore_as_new(rig.ctx, point, placement)
    new = (await rig.session.properties(await rig.vm("moved"), ["config"]))["config"]
    (moved,) = [d for d in new.hardware.device if isinstance(d, D.VirtualEthernetCard)]
    assert isinstance(moved.backing, D.VirtualEthernetCard.NetworkBackingInfo)
    assert moved.backing.deviceName == "VM Network"

    with pytest.raises(UserError, match="had no adapter on 'Other'"):
        await restore_as_new(rig.ctx, point, Placement("y", network_map={"Other": "VM Network"}))
    with pytest.raises(UserError, match="network 'nowhere' not found"):
        await restore_as_new(rig.ctx, point, Placement("z", network_map={"DC0_DVPG0": "nowhere"}))


async def test_a_host_in_maintenance_is_not_used(rig: Rig) -> None:
    vm = await rig.vm("DC0_C0_RP0_VM0")  # in the cluster: three hosts to choose from
    point = (await rig.backup(vm)).point_id
    idx = rig.session.content.searchIndex
    h0 = rig.session.client.bind(
        await rig.session.call(
            idx, "FindByInventoryPath", inventoryPath="DC0/host/DC0_C0/DC0_C0_H0"
        )
    )
    await enter_maintenance(rig, h0)

    with pytest.raises(UserError, match="DC0_C0_H0 is in maintenance mode"):
        await restore_as_new(rig.ctx, point, Placement("a", host="/DC0/host/DC0_C0/DC0_C0_H0"))
    await restore_as_new(rig.ctx, point, Placement("b"))
    new = await rig.vm("b")
    host = (await rig.session.properties(new, ["runtime.host"]))["runtime.host"]
    assert host._moId != h0._moId


def test_choose_host() -> None:
    def h(name: str, conn: str = "connected", maint: bool = False, ds: tuple = ()) -> HostFacts:
        return HostFacts(name, name, conn, maint, frozenset(ds))

    need = {"ds-1": "A", "ds-2": "B"}
    assert choose_host([h("h1", ds=("ds-1", "ds-2"))], need) == ("h1", "")
    got, why = choose_host(
        [
            h("h1", conn="disconnected", ds=("ds-1", "ds-2")),
            h("h2", maint=True, ds=("ds-1", "ds-2")),
            h("h3", ds=("ds-1",)),
            h("h4", ds=("ds-1", "ds-2")),
        ],
        need,
    )
    assert got == "h4"
    got, why = choose_host([h("h1", conn="notResponding"), h("h3", ds=("ds-1",))], need)
    assert got is None
    assert why == "h1 is notResponding; h3 does not mount B"


def test_parse_mapping() -> None:
    assert parse_mapping(["a=b", " c = d "], "--datastore-map") == {"a": "b", "c": "d"}
    for bad in (["a"], ["=b"], ["a="]):
        with pytest.raises(UserError, match="expected SRC=DST"):
            parse_mapping(bad, "--network-map")
    with pytest.raises(UserError, match="mapped twice"):
        parse_mapping(["a=b", "a=c"], "--datastore-map")


def test_only_a_vanished_original_changes_placement() -> None:
    assert original_gone(VsphereFault("ManagedObjectNotFound", "gone"))
    assert not original_gone(VsphereFault("NoPermission", "no"))
    assert not original_gone(VsphereConnectionError("down"))


async def test_disk_provisioning_types_are_kept(ds2_rig: Rig) -> None:
    """The seed: "re-create virtual disk with the same disk type as the original"."""
    from protector.vsphere.vmconfig import provisioning_of

    rig = ds2_rig
    vm = await rig.prepare(MIB, bytes(MIB))
    kinds = {1: (True, False), 2: (False, False), 3: (False, True)}  # thin, lazy, eager
    first = await rig.disk(vm)
    changes = [
        D.VirtualDeviceSpec(
            operation="add",
            fileOperation="create",
            device=D.VirtualDisk(
                key=-unit,
                controllerKey=first.controllerKey,
                unitNumber=unit,
                capacityInKB=1024,
                backing=D.VirtualDisk.FlatVer2BackingInfo(
                    fileName="[LocalDS_1]",
                    diskMode="persistent",
                    thinProvisioned=thin,
                    eagerlyScrub=eager,
                ),
            ),
        )
        for unit, (thin, eager) in kinds.items()
    ]
    await rig.run(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(deviceChange=changes))
    before = [provisioning_of(d.backing) for d in await rig.disks(vm)]
    assert before[1:] == ["thin", "lazy-zeroed-thick", "eager-zeroed-thick"]
    point = (await rig.backup(vm)).point_id
    await restore_as_new(rig.ctx, point, Placement("typed"))
    after = [provisioning_of(d.backing) for d in await rig.disks(await rig.vm("typed"))]
    assert after == before
