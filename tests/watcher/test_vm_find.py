"""`vigil backup VM`'s lookup (protector/vsphere/vmfind.py) against the full inventory read
it replaces: the same VmNode (path, identity, tags...) or the same error for every way of
naming a VM, and what it costs vCenter, counted by a proxy in front of the simulator."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from pyVmomi import vim
from watchkit import SoapProxy, run_task

from protector.vsphere.vmfind import lookup_vm
from protector.vsphere.vmlookup import VmAmbiguous, VmNotFound, find_vm
from watcher.inventory import read_inventory_with_tags
from watcher.session import Credentials, Session
from watcher.soap import Endpoint
from watcher.tags import TagClient
from watcher.tree import VmNode

# 2 datacenters (a VM name can repeat across them), a folder level, a vApp per cluster
# (VMs that live only in a vApp get the vApp's path) and 6 VMs per pool: 36 VMs.
ARGS = ["-dc", "2", "-folder", "1", "-app", "1", "-vm", "6"]
PROPSET = re.compile(rb"<propSet>")
OBJECTS = re.compile(rb"<objects>")


def session_of(sim: Any) -> Session:
    return Session(Endpoint(sim.url), Credentials(sim.user, sim.password))


async def tag_some(sim: Any, nodes: list[VmNode]) -> None:
    admin = TagClient(Endpoint(sim.url), sim.user, sim.password)
    try:
        cat = await admin.create_category("env")
        tag = await admin.create_tag(cat, "prod")
        for vm in nodes[::3]:
            await admin.attach(tag, vm.moref)
    finally:
        await admin.close()


def specs_of(vm: VmNode) -> list[str]:
    """Every way an admin may name `vm`, in the case they may type it."""
    out = [vm.name, vm.path, vm.path + "/", vm.moref]
    if vm.instance_uuid:
        out += [vm.instance_uuid, vm.instance_uuid.upper()]
    if vm.bios_uuid:
        out += [vm.bios_uuid, vm.bios_uuid.upper()]
    return out


async def outcome(fn: Any) -> Any:
    """The node found, or the error's type and message."""
    try:
        return await fn()
    except (VmNotFound, VmAmbiguous) as exc:
        return (type(exc).__name__, str(exc))


@pytest.fixture
def sim(make_vcsim: Any) -> Any:
    return make_vcsim(args=ARGS)


async def test_same_node_or_error_as_the_full_read(sim: Any) -> None:
    async with session_of(sim) as s:
        await tag_some(
            sim, sorted((await read_inventory_with_tags(s, required=True)).vms(), key=str)
        )
        # One name in both datacenters: ambiguous by name, not by path or UUID.
        twin = next(v for v in (await read_inventory_with_tags(s, required=True)).vms())
        other = next(
            v
            for v in (await read_inventory_with_tags(s, required=True)).vms()
            if v.datacenter != twin.datacenter and v.vapp is None
        )
        await run_task(s, s.moref("VirtualMachine", other.moref), "Rename_Task", newName=twin.name)
        tree = await read_inventory_with_tags(s, required=True)
        vms = tree.vms()
        assert len(vms) > 30 and any(v.tags for v in vms) and any(v.vapp for v in vms)
        specs = [spec for vm in vms for spec in specs_of(vm)]
        specs += [
            "nope",
            "/DC0/vm/nope",
            "/DC0/vm",
            "vm-999999",
            "00000000-0000-0000-0000-0000000000ff",
        ]
        checked = Counter()
        for spec in specs:

            async def full(spec: str = spec) -> VmNode:
                return find_vm(vms, spec)

            async def targeted(spec: str = spec) -> VmNode:
                return (await lookup_vm(s, spec)).node

            want = await outcome(full)
            assert await outcome(targeted) == want, spec
            checked[type(want).__name__ if isinstance(want, VmNode) else want[0]] += 1
        assert checked["VmNode"] > 200 and checked["VmAmbiguous"] == 2, checked  # each twin by name
        assert checked["VmNotFound"] == 5, checked


async def test_reads_the_vm_not_the_inventory(sim: Any) -> None:
    async with session_of(sim) as s:
        vms = (await read_inventory_with_tags(s, required=True)).vms()
    vm = next(v for v in vms if v.vapp is None)
    async with SoapProxy(sim) as proxy, session_of(proxy) as s:
        # by path, MoRef and instance UUID: the VM and its ancestors, nothing else
        for spec in (vm.path, vm.moref, vm.instance_uuid):
            proxy.calls.clear()
            proxy.answers.clear()
            assert (await lookup_vm(s, spec)).node.moref == vm.moref
            assert "CreateContainerView" not in proxy.calls, (spec, proxy.calls)
            objs = sum(len(OBJECTS.findall(a)) for m, a in proxy.answers if "Retrieve" in m)
            assert objs <= 12, (spec, objs)  # the VM, folders, datacenter, pool, cluster
            assert proxy.calls["/api/cis/tagging/tag-association"] <= 1, proxy.calls
        # by name: one property of each VM, then the full properties of the match
        proxy.calls.clear()
        proxy.answers.clear()
        assert (await lookup_vm(s, vm.name)).node.moref == vm.moref
        props = sum(len(PROPSET.findall(a)) for m, a in proxy.answers if "Retrieve" in m)
        assert props < len(vms) + 40, props  # the full read: ~15 per VM
        assert proxy.calls["DestroyView"] == proxy.calls["CreateContainerView"] == 1


async def test_a_mistyped_name_or_path_gets_the_closest(sim: Any) -> None:
    from protector.cli.common import find_vm_live
    from protector.errors import UserError

    async with session_of(sim) as s:
        tree = await read_inventory_with_tags(s, required=False)
        path = next(v.path for v in tree.vms() if v.name == "DC0_H0_VM0")
        with pytest.raises(UserError) as err:
            await find_vm_live(s, path[:-1])
        # DC0_H0_VM0..5 are equally close: any of them, by path
        assert f"no VM at inventory path {path[:-1]!r}; did you mean {path[:-1]}" in str(err.value)
        with pytest.raises(
            UserError, match=r"no VM with name 'DC0_H0_VM'; did you mean DC0_H0_VM\d"
        ):
            await find_vm_live(s, "DC0_H0_VM")
        with pytest.raises(UserError, match=r"no VM with MoRef 'vm-999999' \(`vigil inventory`"):
            await find_vm_live(s, "vm-999999")


async def nest_vapps(s: Session, outer: Any) -> list[str]:
    """INNER (one VM) inside `outer`, DEEP (one VM) inside INNER and EMPTY (no VM) inside
    `outer`, as an admin builds them (ResourcePool.CreateVApp, CreateChildVM_Task); the
    new VMs' MoRefs."""
    resources = vim.ResourceConfigSpec(
        cpuAllocation=vim.ResourceAllocationInfo(
            reservation=0,
            expandableReservation=True,
            limit=-1,
            shares=vim.SharesInfo(level="normal", shares=0),
        ),
        memoryAllocation=vim.ResourceAllocationInfo(
            reservation=0,
            expandableReservation=True,
            limit=-1,
            shares=vim.SharesInfo(level="normal", shares=0),
        ),
    )
    made = []
    parent = outer
    for name in ("INNER", "DEEP"):
        parent = s.client.bind(
            await s.call(
                parent,
                "CreateVApp",
                name=name,
                resSpec=resources,
                configSpec=vim.vApp.VAppConfigSpec(),
            )
        )
        spec = vim.vm.ConfigSpec(
            name=f"{name.lower()}-vm",
            guestId="otherGuest",
            numCPUs=1,
            memoryMB=32,
            files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        )
        made.append((await run_task(s, parent, "CreateChildVM_Task", config=spec))._moId)
    await s.call(
        outer, "CreateVApp", name="EMPTY", resSpec=resources, configSpec=vim.vApp.VAppConfigSpec()
    )
    return made


async def test_vapp_members_as_the_full_read(sim: Any) -> None:
    """`vigil backup --vapp`: the VMs of the vApp and of the vApps nested in it (vapp_vms),
    read with ancestry and tags, give the same member nodes as filtering the full read by
    a `vapp` path at or below the vApp's."""
    from protector.vsphere.vapps import vapp_vms
    from protector.vsphere.vmfind import read_vms

    async with session_of(sim) as s:
        first = sorted(
            {v.vapp for v in (await read_inventory_with_tags(s, required=True)).vms() if v.vapp}
        )[0]
        outer = s.client.bind(
            await s.call(s.content.searchIndex, "FindByInventoryPath", inventoryPath=first)
        )
        nested = await nest_vapps(s, outer)
        await tag_some(
            sim, sorted((await read_inventory_with_tags(s, required=True)).vms(), key=str)
        )
        tree = await read_inventory_with_tags(s, required=True)
        vapps = sorted({v.vapp for v in tree.vms() if v.vapp})
        # Both nested vApps hold a VM the full read lists under their paths.
        assert f"{first}/INNER" in vapps and f"{first}/INNER/DEEP" in vapps
        vapps.append(f"{first}/EMPTY")
        assert len(vapps) >= 5
        for path in vapps:
            ref = await s.call(s.content.searchIndex, "FindByInventoryPath", inventoryPath=path)
            got = (await read_vms(s, await vapp_vms(s, s.client.bind(ref)))).vms()
            want = [v for v in tree.vms() if v.vapp and (v.vapp + "/").startswith(path + "/")]
            assert sorted(got, key=str) == sorted(want, key=str), path
            assert want or path.endswith("/EMPTY"), path
            assert any(v.tags for v in got) or len(got) < 3
        # The outer vApp's members are its own VMs and the nested vApps' VMs.
        outer_members = await vapp_vms(s, outer)
        assert set(nested) <= set(outer_members) and len(outer_members) > len(nested)
