"""vApps as a unit (issue 14 item 9): a nested vApp with three small VMs, start order, OVF
properties and IP allocation set; `vigil backup --vapp` saves it as one set; `vigil list
--vapps` shows the set (complete or not); `vigil restore --vapp-set` brings it back as a new
vApp with its nested vApp, members (byte-exact disks) and configuration. Also the
simulator's vApp emulation (vcsim/vapp.go), checked so it fails where vCenter would."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from pyVmomi import vim

from protector.vsphere.configspec import build_config_spec
from protector.vsphere.vapps import child_vapps
from watcher.soap import VsphereFault

MIB = 1024 * 1024
Rig = Any  # the `vapp_rig` fixture of conftest.py
VIGIL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "vigil")
APP = "/DC0/host/DC0_C0/Resources/DC0_C0_APP0"


async def vigil(rig: Rig, *args: str, ok: bool = True) -> Any:
    proc = await anyio.run_process(
        [VIGIL, "--config", str(rig.tmp / "vigil.toml"), *args], check=False, env=dict(os.environ)
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    if not ok:
        assert proc.returncode != 0, (args, out)
        return err
    assert proc.returncode == 0, (args, out, err[-3000:])
    return json.loads(out) if "--json" in args else out


async def find(rig: Rig, path: str) -> Any:
    idx = rig.session.content.searchIndex
    ref = await rig.session.call(idx, "FindByInventoryPath", inventoryPath=path.strip("/"))
    assert ref is not None, path
    return rig.session.client.bind(ref)


def resource_spec() -> vim.ResourceConfigSpec:
    def alloc(reservation: int) -> vim.ResourceAllocationInfo:
        return vim.ResourceAllocationInfo(
            reservation=reservation,
            expandableReservation=True,
            limit=-1,
            shares=vim.SharesInfo(level="high", shares=0),
        )

    return vim.ResourceConfigSpec(cpuAllocation=alloc(100), memoryAllocation=alloc(64))


def entity(vm: Any, order: int, **kw: Any) -> vim.vApp.EntityConfigInfo:
    return vim.vApp.EntityConfigInfo(key=vm, startOrder=order, **kw)


async def build_shop(rig: Rig) -> dict[str, Any]:
    """APP0 (two VMs of the model) holding the nested vApp INNER with one VM, inner-db;
    every member 1 MiB of its own bytes; start order, properties, IP allocation set."""
    s = rig.session
    app = await find(rig, APP)
    outer_vms = [s.client.bind(v) for v in (await s.properties(app, ["vm"]))["vm"]]
    assert len(outer_vms) == 2
    inner = s.client.bind(
        await s.call(
            app,
            "CreateVApp",
            name="INNER",
            resSpec=resource_spec(),
            configSpec=vim.vApp.VAppConfigSpec(annotation="the database tier"),
        )
    )
    template = (await s.properties(outer_vms[0], ["config"]))["config"]
    spec = build_config_spec(template, name="inner-db", datastore_name="LocalDS_0").spec
    db = s.client.bind(await rig.run(inner, "CreateChildVM_Task", config=spec))
    members = [*outer_vms, db]
    datas = {}
    for vm in members:
        datas[vm._moId] = os.urandom(256 * 1024) * 2 + bytes(256 * 1024) + os.urandom(256 * 1024)
        assert len(datas[vm._moId]) == MIB
        await rig.put_flat(vm, datas[vm._moId])
    await s.call(
        app,
        "UpdateVAppConfig",
        spec=vim.vApp.VAppConfigSpec(
            entityConfig=[
                entity(inner, 1, startAction="powerOn", stopAction="powerOff"),
                entity(outer_vms[0], 2, startDelay=30, waitingForGuest=True, startAction="powerOn"),
                entity(outer_vms[1], 3, stopAction="guestShutdown", stopDelay=60),
            ],
            property=[
                vim.vApp.PropertySpec(
                    operation="add",
                    info=vim.vApp.PropertyInfo(
                        key=7, id="db_host", type="string", value="10.0.0.5", defaultValue=""
                    ),
                ),
                vim.vApp.PropertySpec(
                    operation="add",
                    info=vim.vApp.PropertyInfo(key=8, id="port", type="int", value="5432"),
                ),
            ],
            ipAssignment=vim.vApp.IPAssignmentInfo(
                ipAllocationPolicy="fixedPolicy",
                ipProtocol="IPv4",
                supportedIpProtocol=["IPv4"],
                supportedAllocationScheme=["ovfenv"],
            ),
        ),
    )
    await s.call(
        inner,
        "UpdateVAppConfig",
        spec=vim.vApp.VAppConfigSpec(entityConfig=[entity(db, 1, stopAction="guestShutdown")]),
    )
    return {"app": app, "inner": inner, "members": members, "datas": datas, "db": db}


async def test_simulator_vapp_configuration_like_vcenter(vapp_rig: Rig) -> None:
    """What vcsim/vapp.go adds: UpdateVAppConfig applies (govmomi 0.24.2 lacks it), a
    nested vApp has parentVApp set, an entity of
    another vApp and Folder.CreateVM_Task into a vApp are refused."""
    rig = vapp_rig
    s = rig.session
    shop = await build_shop(rig)
    app, inner = shop["app"], shop["inner"]
    props = await s.properties(app, ["vAppConfig"])
    assert (await s.properties(inner, ["parentVApp"]))["parentVApp"]._moId == app._moId
    assert [k._moId for k in (await child_vapps(s))[app._moId]] == [inner._moId]
    cfg = props["vAppConfig"]
    orders = {e.key._moId: e.startOrder for e in cfg.entityConfig}
    assert orders == {inner._moId: 1, **{m._moId: n for n, m in enumerate(shop["members"][:2], 2)}}
    assert {p.id: p.value for p in cfg.property} == {"db_host": "10.0.0.5", "port": "5432"}
    assert cfg.ipAssignment.ipAllocationPolicy == "fixedPolicy"
    # editing one property keeps the other; a duplicate key on add is refused
    await s.call(
        app,
        "UpdateVAppConfig",
        spec=vim.vApp.VAppConfigSpec(
            property=[
                vim.vApp.PropertySpec(
                    operation="edit", info=vim.vApp.PropertyInfo(key=8, id="port", value="6432")
                )
            ]
        ),
    )
    cfg = (await s.properties(app, ["vAppConfig"]))["vAppConfig"]
    assert {p.id: p.value for p in cfg.property} == {"db_host": "10.0.0.5", "port": "6432"}
    with pytest.raises(VsphereFault) as e:
        await s.call(
            app,
            "UpdateVAppConfig",
            spec=vim.vApp.VAppConfigSpec(
                property=[vim.vApp.PropertySpec(operation="add", info=vim.vApp.PropertyInfo(key=8))]
            ),
        )
    assert e.value.fault_type == "InvalidArgument"
    # inner-db belongs to INNER, not to APP0
    with pytest.raises(VsphereFault) as e:
        await s.call(
            app,
            "UpdateVAppConfig",
            spec=vim.vApp.VAppConfigSpec(entityConfig=[entity(shop["db"], 5)]),
        )
    assert e.value.fault_type == "InvalidArgument"
    folder = (await s.properties(shop["members"][0], ["parent"]))["parent"]
    files = vim.vm.FileInfo(vmPathName="[LocalDS_0]")
    spec = vim.vm.ConfigSpec(name="x", guestId="otherGuest", files=files)
    with pytest.raises(VsphereFault) as e:
        await s.call(s.client.bind(folder), "CreateVM_Task", config=spec, pool=app)
    assert e.value.fault_type == "InvalidArgument"
    # CreateVApp applies the whole spec (the simulator kept only annotation and products)
    root_pool = s.client.bind((await s.properties(app, ["parent"]))["parent"])
    made = await s.call(
        root_pool,
        "CreateVApp",
        name="made",
        resSpec=resource_spec(),
        configSpec=vim.vApp.VAppConfigSpec(
            property=[
                vim.vApp.PropertySpec(
                    operation="add", info=vim.vApp.PropertyInfo(key=1, id="x", value="y")
                )
            ],
            ipAssignment=vim.vApp.IPAssignmentInfo(ipAllocationPolicy="dhcpPolicy"),
        ),
        vmFolder=s.client.bind(folder),
    )
    cfg = (await s.properties(s.client.bind(made), ["vAppConfig"]))["vAppConfig"]
    assert [(p.id, p.value) for p in cfg.property] == [("x", "y")]
    assert cfg.ipAssignment.ipAllocationPolicy == "dhcpPolicy"


async def test_vapp_set_backup_list_and_restore_as_new_vapp(
    vapp_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = vapp_rig
    s = rig.session
    monkeypatch.setenv("VIGIL_TEST_VCENTER_PASSWORD", rig.sim.password)
    shop = await build_shop(rig)
    names = {m._moId: (await s.properties(m, ["name"]))["name"] for m in shop["members"]}

    out = await vigil(rig, "backup", "--vapp", APP, "--json")
    assert out["failures"] == [] and len(out["points"]) == 3
    assert sorted(p["vm"]["moref"] for p in out["points"]) == sorted(names)

    [vset] = await vigil(rig, "list", "--vapps", "--json")
    assert vset["id"] == out["group_id"] and vset["complete"] is True and vset["missing"] == []
    assert vset["vapp"]["path"] == APP and vset["vapp"]["nested_vapps"] == 1
    assert sorted(m["name"] for m in vset["members"]) == sorted(names.values())
    text = await vigil(rig, "list", "--vapps")
    assert "3/3 members  complete" in text and "(1 nested vApp)" in text

    r = await vigil(
        rig, "restore", "--vapp-set", vset["id"][:10], "--new-name", "shop2", "--verify", "--json"
    )
    assert r["notes"] == [] and len(r["members"]) == 3 and len(r["vapps"]) == 2
    assert all(d["verified"] for m in r["members"] for d in m["disks"])

    new_app = await find(rig, "/DC0/host/DC0_C0/Resources/shop2")
    new_props = await s.properties(new_app, ["vm", "vAppConfig", "config"])
    [new_inner] = (await child_vapps(s))[new_app._moId]
    inner_props = await s.properties(new_inner, ["name", "vm", "vAppConfig", "parentVApp"])
    assert inner_props["name"] == "INNER" and inner_props["parentVApp"]._moId == new_app._moId

    new_names = {}
    for v in [*new_props["vm"], *inner_props["vm"]]:
        new_names[v._moId] = (await s.properties(s.client.bind(v), ["name"]))["name"]
    by_name = {n: m for m, n in new_names.items()}
    assert sorted(new_names.values()) == sorted(f"{n}-shop2" for n in names.values())
    assert [new_names[v._moId] for v in inner_props["vm"]] == ["inner-db-shop2"]
    # byte-exact disks
    for old, data in shop["datas"].items():
        new_vm = s.moref("VirtualMachine", by_name[f"{names[old]}-shop2"])
        assert await rig.read_flat(new_vm, MIB) == data

    # start order on the new morefs: the nested vApp first, then the two VMs
    cfg = new_props["vAppConfig"]
    got = {
        (new_names.get(e.key._moId) or e.key._moId): (
            e.startOrder, e.startDelay or 0, bool(e.waitingForGuest), e.startAction, e.stopAction
        )
        for e in cfg.entityConfig
    }  # fmt: skip
    m0, m1 = (names[m._moId] for m in shop["members"][:2])
    assert got == {
        new_inner._moId: (1, 0, False, "powerOn", "powerOff"),
        f"{m0}-shop2": (2, 30, True, "powerOn", None),
        f"{m1}-shop2": (3, 0, False, None, "guestShutdown"),
    }
    assert {p.id: p.value for p in cfg.property} == {"db_host": "10.0.0.5", "port": "5432"}
    assert cfg.ipAssignment.ipAllocationPolicy == "fixedPolicy"
    assert cfg.ipAssignment.ipProtocol == "IPv4"
    [inner_entity] = inner_props["vAppConfig"].entityConfig
    assert new_names[inner_entity.key._moId] == "inner-db-shop2"
    assert inner_entity.stopAction == "guestShutdown"
    # the resource allocation came along
    assert new_props["config"].cpuAllocation.shares.level == "normal"  # APP0's (model default)
    inner_cfg = (await s.properties(new_inner, ["config"]))["config"]
    assert inner_cfg.cpuAllocation.reservation == 100
    assert inner_cfg.memoryAllocation.shares.level == "high"

    # a second restore under the same name fails before anything is made, and says so
    err = await vigil(rig, "restore", "--vapp-set", vset["id"], "--new-name", "shop2", ok=False)
    assert "DuplicateName" in err and "created so far: vApps nothing, members none" in err
    err = await vigil(rig, "restore", "--vapp-set", "ffff", "--new-name", "x", ok=False)
    assert "no vApp set 'ffff'" in err
    err = await vigil(rig, "restore", "--vapp-set", vset["id"], "--to-existing", ok=False)
    assert "--new-name" in err


@pytest.fixture
async def failing_vapp_rig(make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """One vApp whose second VM cannot be quiesced (vcsim -quiesce-fault)."""
    from tests.protector.conftest import PASSWORD_ENV, open_rig

    sim = make_vcsim(args=["-app", "1", "-quiesce-fault", "DC0_C0_APP0_VM1"])
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r


async def test_a_failed_member_leaves_the_set_incomplete(failing_vapp_rig: Rig) -> None:
    from protector.backup import BackupOptions, backup_vapp

    rig = failing_vapp_rig
    app = await find(rig, APP)
    res = await backup_vapp(
        rig.ctx, app, BackupOptions(quiesce=True, quiesce_fallback=False), path=APP
    )
    assert len(res.results) == 1 and len(res.failures) == 1 and not res.ok

    [vset] = await vigil(rig, "list", "--vapps", "--json")
    assert vset["complete"] is False
    assert [m["name"] for m in vset["missing"]] == ["DC0_C0_APP0_VM1"]
    assert "1/2 members  INCOMPLETE" in await vigil(rig, "list", "--vapps")
    assert len(await vigil(rig, "list", "--vapps", "DC0_C0_APP0", "--json")) == 1
    assert len(await vigil(rig, "list", "--vapps", APP, "--json")) == 1
    assert "no vApp sets of 'nope'" in await vigil(rig, "list", "--vapps", "nope")

    err = await vigil(rig, "restore", "--vapp-set", vset["id"], "--new-name", "half", ok=False)
    assert "incomplete" in err and "DC0_C0_APP0_VM1" in err and "--allow-incomplete" in err
    r = await vigil(
        rig, "restore", "--vapp-set", vset["id"], "--new-name", "half",
        "--allow-incomplete", "--json",
    )  # fmt: skip
    assert [m["vm"]["name"] for m in r["members"]] == ["DC0_C0_APP0_VM0-half"]
    assert any("not restored" in n for n in r["notes"])


SHOP_POLICY = f"""\
[[policy]]
name = "shop"
priority = 10

[policy.select]
vapps = ["{APP}"]

[policy.schedule]
rpo = "24h"

[policy.retention]
keep_last = 3

[policy.backup]
quiesce = false
"""


async def test_a_policy_selecting_a_vapp_backs_it_up_as_one_set(
    vapp_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vapps` selects the vApp by path; its VMs, the nested vApp's too, are one set."""
    rig = vapp_rig
    monkeypatch.setenv("VIGIL_TEST_VCENTER_PASSWORD", rig.sim.password)
    shop = await build_shop(rig)
    (rig.tmp / "policies" / "shop.toml").write_text(SHOP_POLICY)
    # the VM of the nested vApp is selected too: its vApp is inside the one named
    check = await vigil(rig, "policy", "check", "--json")
    unprotected = json.dumps(check["unprotected"])
    assert "inner-db" not in unprotected and "DC0_C0_APP0_VM0" not in unprotected
    assert "DC0_H0_VM0" in unprotected

    out = await vigil(rig, "backup", "--policy", "shop", "--json")
    assert out["failures"] == [] and out["skipped"] == []
    [vset] = out["vapp_sets"]
    assert vset["vapp"] == APP and vset["complete"] is True and len(vset["points"]) == 3
    assert sorted(p["vm"]["moref"] for p in out["points"]) == sorted(
        m._moId for m in shop["members"]
    )
    [listed] = await vigil(rig, "list", "--vapps", "--json")
    assert listed["id"] == vset["id"] and listed["complete"] and listed["vapp"]["nested_vapps"] == 1
    # the points carry the policy
    for p in out["points"]:
        assert rig.repo.load_manifest(p["id"]).policy == "shop"


async def test_a_vapp_member_restored_as_new_lands_in_its_vapp(vapp_rig: Rig) -> None:
    """The default placement is the original's pool, here its vApp: the VM is made with the
    vApp's CreateChildVM_Task (Folder.CreateVM_Task into a vApp is refused, as on vCenter)."""
    from protector.restore import Placement, restore_as_new

    rig = vapp_rig
    s = rig.session
    app = await find(rig, APP)
    vm = s.client.bind((await s.properties(app, ["vm"]))["vm"][0])
    data = os.urandom(MIB)
    await rig.put_flat(vm, data)
    point = await rig.backup(vm)
    res = await restore_as_new(rig.ctx, point.point_id, Placement("member-copy"), verify=True)
    new_vm = s.moref("VirtualMachine", res.vm_moref)
    assert (await s.properties(new_vm, ["resourcePool"]))["resourcePool"]._moId == app._moId
    assert res.vm_moref in [v._moId for v in (await s.properties(app, ["vm"]))["vm"]]
    assert await rig.read_flat(new_vm, MIB) == data
