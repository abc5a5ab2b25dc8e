"""Saved VM configuration: capture round-trip, disk summaries, and the rebuilt ConfigSpec.

Samples in samples/ are ConfigInfo recorded from the simulator and shaped after real
vCenter configurations (samples/record.py re-records them).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from protector.devtools.simulator import Simulator
from protector.vsphere.configspec import (
    COPIED_FIELDS,
    DEFAULT_DEVICE_TYPES,
    ConfigSpecError,
    RebuiltSpec,
    build_config_spec,
    video_card_edit_spec,
)
from protector.vsphere.vmconfig import (
    SKIP_INDEPENDENT,
    SKIP_PHYSICAL_RDM,
    ConfigFormatError,
    base_disk_name,
    deserialize_config,
    disk_summaries,
    serialize_config,
)

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.xml"))
D = vim.vm.device
DS = "TargetDS"


def load(name: str) -> vim.vm.ConfigInfo:
    return deserialize_config((SAMPLES / f"{name}.xml").read_text(), source=f"{name}.xml")


def build(cfg: vim.vm.ConfigInfo, **kw: object) -> RebuiltSpec:
    kw.setdefault("name", "restored")
    kw.setdefault("datastore_name", DS)
    return build_config_spec(cfg, **kw)  # type: ignore[arg-type]


def devices(cfg: vim.vm.ConfigInfo) -> dict[int, D.VirtualDevice]:
    return {d.key: d for d in cfg.hardware.device}


def spec_devices(r: RebuiltSpec) -> dict[int, D.VirtualDevice]:
    return {c.device.key: c.device for c in r.spec.deviceChange}


def test_samples_present() -> None:
    assert SAMPLE_NAMES == ["multi_controller", "rdm_independent", "sim_vm0"]


# --- capture -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_serialization_round_trips_exactly(name: str) -> None:
    text = (SAMPLES / f"{name}.xml").read_text().strip()
    assert serialize_config(deserialize_config(text)) == text


def test_round_trip_keeps_types_and_values() -> None:
    cfg = deserialize_config(serialize_config(load("rdm_independent")))
    devs = devices(cfg)
    assert isinstance(devs[1000], D.VirtualLsiLogicController)
    assert isinstance(devs[1001], D.ParaVirtualSCSIController)
    assert devs[1001].sharedBus == "physicalSharing"
    rdm = devs[2001].backing
    assert isinstance(rdm, D.VirtualDisk.RawDiskMappingVer1BackingInfo)
    assert rdm.compatibilityMode == "physicalMode"
    assert rdm.lunUuid == "0200000000600a0b800012345678"
    assert rdm.datastore._moId == "datastore-localds0"
    assert isinstance(devs[4000], D.VirtualE1000e)
    assert devs[4000].backing.network._moId == "network-7"
    assert devs[2000].capacityInBytes == 4 * 1024**3

    multi = deserialize_config(serialize_config(load("multi_controller")))
    assert [(m.level, m.vendor) for m in multi.cpuFeatureMask] == [
        (1, "intel"),
        (-2147483647, "amd"),
    ]
    assert multi.cpuFeatureMask[0].ecx == "---- ---- ---- ---- ---- ---- ---- --0-"
    extra = {o.key: o.value for o in multi.extraConfig}
    assert extra["guestinfo.metadata"] == "e30="
    dvs = next(d for d in multi.hardware.device if isinstance(d, D.VirtualE1000)).backing
    assert isinstance(dvs, D.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    assert dvs.port.portgroupKey == "dvportgroup-13"
    assert isinstance(devices(multi)[31000], D.VirtualNVMEController)
    assert isinstance(devices(multi)[3002].backing, D.VirtualCdrom.IsoBackingInfo)


def test_deserialize_names_the_source_on_bad_input() -> None:
    with pytest.raises(ConfigFormatError, match=re.escape("point-7/config.xml")):
        deserialize_config("<obj>not xml", source="point-7/config.xml")
    spec_text = serialize_config(load("sim_vm0")).replace(
        'xsi:type="VirtualMachineConfigInfo"', 'xsi:type="VirtualMachineConfigSpec"'
    )
    with pytest.raises(ConfigFormatError, match=re.escape("x.xml")):
        deserialize_config(spec_text, source="x.xml")
    with pytest.raises(TypeError):
        serialize_config(vim.vm.ConfigSpec())  # type: ignore[arg-type]
    newer = serialize_config(load("sim_vm0")).replace(
        "<firmware>bios</firmware>", "<firmware>bios</firmware><futureProp>1</futureProp>"
    )
    with pytest.raises(ConfigFormatError, match=r"a\.xml: .*futureProp"):
        deserialize_config(newer, source="a.xml")


# --- disk summaries ------------------------------------------------------------------


def test_disk_summaries_addresses_sizes_and_provisioning() -> None:
    by_key = {d.key: d for d in disk_summaries(load("multi_controller"))}
    delta = by_key[255511522]
    assert delta.address == "scsi0:0"
    assert delta.file_name == "[LocalDS_0] multi/multi-000001.vmdk"
    assert delta.base_name == "[LocalDS_0] multi/multi.vmdk"
    assert delta.capacity_bytes == 1024 * 1024  # from capacityInKB: capacityInBytes unset
    assert (delta.backing, delta.provisioning, delta.skip_reason) == ("flat", "thin", None)
    assert by_key[2001].address == "scsi1:0"
    assert by_key[2001].provisioning == "eager-zeroed-thick"
    assert by_key[2001].capacity_bytes == 2 * 1024**3
    assert by_key[2001].datastore == "datastore-localds0"
    assert by_key[2001].change_id == "52 aa bb cc dd ee ff 00-11 22 33 44 55 66 77 88/4"
    assert by_key[16000].address == "sata0:0"
    assert by_key[16000].provisioning == "lazy-zeroed-thick"
    assert by_key[32000].address == "nvme0:3"
    assert by_key[32000].disk_mode == "persistent"


def test_disk_summaries_rdm_and_independent_skip_reasons() -> None:
    by_key = {d.key: d for d in disk_summaries(load("rdm_independent"))}
    assert (by_key[2000].backing, by_key[2000].skip_reason) == ("flat", None)
    assert by_key[2001].backing == "rdm-physical"
    assert by_key[2001].skip_reason == SKIP_PHYSICAL_RDM
    assert by_key[2001].provisioning is None
    assert (by_key[2002].backing, by_key[2002].skip_reason) == ("rdm-virtual", None)
    assert by_key[2003].skip_reason == SKIP_INDEPENDENT
    assert by_key[2004].skip_reason == SKIP_INDEPENDENT
    assert by_key[2004].disk_mode == "independent_nonpersistent"
    assert by_key[2001].address == "scsi1:0"


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("[ds] vm/vm-000001.vmdk", "[ds] vm/vm.vmdk"),
        ("[ds] vm/vm-000012.vmdk", "[ds] vm/vm.vmdk"),
        ("[ds] my-vm/my-vm_1-000003.vmdk", "[ds] my-vm/my-vm_1.vmdk"),
        ("[ds] vm/vm.vmdk", "[ds] vm/vm.vmdk"),
        ("[ds] vm/data-2024.vmdk", "[ds] vm/data-2024.vmdk"),
        ("[ds] vm/vm-000001-flat.vmdk", "[ds] vm/vm-000001-flat.vmdk"),
    ],
)
def test_base_name_strips_snapshot_delta_suffix(name: str, base: str) -> None:
    assert base_disk_name(D.VirtualDisk.FlatVer2BackingInfo(fileName=name)) == base


def test_disk_without_known_controller_has_no_address() -> None:
    cfg = load("sim_vm0")
    cfg.hardware.device = [d for d in cfg.hardware.device if d.key != 202]
    (disk,) = disk_summaries(cfg)
    assert disk.address is None and disk.controller_key == 202


# --- ConfigSpec ----------------------------------------------------------------------

DEFAULT_CONTROLLER_KEYS = {200, 201, 300, 400}


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_spec_shape(name: str) -> None:
    cfg = load(name)
    r = build(cfg, name="copy-of-" + name)
    spec = r.spec
    assert spec.name == "copy-of-" + name
    assert spec.files.vmPathName == f"[{DS}]"
    assert spec.uuid is None and spec.instanceUuid is None
    assert spec.numCPUs == cfg.hardware.numCPU
    assert spec.numCoresPerSocket == cfg.hardware.numCoresPerSocket
    assert spec.memoryMB == cfg.hardware.memoryMB
    assert (spec.guestId, spec.version, spec.firmware) == (cfg.guestId, cfg.version, cfg.firmware)

    added = [c.device for c in spec.deviceChange]
    assert all(c.operation == "add" for c in spec.deviceChange)
    assert not [d for d in added if isinstance(d, (*DEFAULT_DEVICE_TYPES, D.VirtualVideoCard))]
    keys = [d.key for d in added]
    assert all(k < 0 for k in keys) and len(set(keys)) == len(keys)
    controllers = {d.key for d in added if isinstance(d, D.VirtualController)}
    for d in added:
        # a controller of the spec, a default controller vCenter creates, or the PCI bus
        assert d.controllerKey is None or d.controllerKey in controllers | DEFAULT_CONTROLLER_KEYS
        if isinstance(d, D.VirtualController):
            assert not d.device
        if d.controllerKey in controllers:
            pos = [x.key for x in added].index(d.controllerKey)
            assert pos < added.index(d), "controllers come before their devices"

    old = devices(cfg)
    new = spec_devices(r)
    for old_key, new_key in r.disk_key_map.items():
        o, n = old[old_key], new[new_key]
        change = next(c for c in spec.deviceChange if c.device is n)
        assert change.fileOperation == "create"
        assert n.capacityInBytes == (o.capacityInBytes or o.capacityInKB * 1024)
        assert n.capacityInKB * 1024 == n.capacityInBytes
        assert n.backing.fileName == f"[{DS}]"
        assert n.backing.uuid is None and n.backing.changeId is None and n.backing.parent is None
        assert n.unitNumber == o.unitNumber
        if isinstance(o.backing, D.VirtualDisk.FlatVer2BackingInfo):
            assert bool(n.backing.thinProvisioned) == bool(o.backing.thinProvisioned)
            assert bool(n.backing.eagerlyScrub) == bool(o.backing.eagerlyScrub)
            assert n.backing.diskMode == o.backing.diskMode
    for d in added:
        if isinstance(d, D.VirtualEthernetCard):
            assert d.addressType == "generated" and d.macAddress is None

    assert [(c.operation, c.info.level, c.info.vendor) for c in spec.cpuFeatureMask] == [
        ("add", m.level, m.vendor) for m in cfg.cpuFeatureMask
    ]
    assert all(isinstance(c, vim.vm.ConfigSpec.CpuIdInfoSpec) for c in spec.cpuFeatureMask)


def _controller_of(dev: D.VirtualDevice, devs: dict[int, D.VirtualDevice]) -> object:
    return devs.get(dev.controllerKey, dev.controllerKey)


def test_controller_relations_are_kept() -> None:
    cfg = load("multi_controller")
    r = build(cfg)
    old, new = devices(cfg), spec_devices(r)
    expected = {  # saved disk key → (controller class, bus, unit)
        255511522: (D.ParaVirtualSCSIController, 0, 0),
        2001: (D.VirtualLsiLogicSASController, 1, 0),
        16000: (D.VirtualAHCIController, 0, 0),
        32000: (D.VirtualNVMEController, 0, 3),
    }
    for old_key, (cls, bus, unit) in expected.items():
        disk = new[r.disk_key_map[old_key]]
        ctrl = new[disk.controllerKey]
        assert type(ctrl) is cls and ctrl.busNumber == bus and disk.unitNumber == unit
        assert type(old[old[old_key].controllerKey]) is cls
        # PCI placement is vCenter's, but the slot (guest device naming) is kept
        assert ctrl.controllerKey is None and ctrl.unitNumber is None
        assert ctrl.slotInfo.pciSlotNumber == old[old[old_key].controllerKey].slotInfo.pciSlotNumber
    assert new[r.disk_key_map[2001]].controllerKey != new[r.disk_key_map[16000]].controllerKey


def test_cdrom_and_floppy_on_default_controllers() -> None:
    r = build(load("multi_controller"))
    cdrom = next(d for d in spec_devices(r).values() if isinstance(d, D.VirtualCdrom))
    # IDE 1 is dropped as a default controller: the CD-ROM attaches to the one vCenter makes
    assert (cdrom.controllerKey, cdrom.unitNumber) == (201, 0)
    assert isinstance(cdrom.backing, D.VirtualCdrom.RemotePassthroughBackingInfo)
    assert cdrom.connectable.startConnected is False
    floppy = next(d for d in spec_devices(r).values() if isinstance(d, D.VirtualFloppy))
    assert (floppy.controllerKey, floppy.unitNumber) == (400, 0)
    assert any("ubuntu-22.04.iso not attached" in n for n in r.notes)

    kept = build(load("multi_controller"), keep_iso=True)
    cdrom = next(d for d in spec_devices(kept).values() if isinstance(d, D.VirtualCdrom))
    assert cdrom.backing.fileName == "[LocalDS_0] iso/ubuntu-22.04.iso"


def test_cdrom_on_scsi_follows_its_controller() -> None:
    r = build(load("sim_vm0"))  # the simulator puts its CD-ROM on the PVSCSI controller
    new = spec_devices(r)
    cdrom = next(d for d in new.values() if isinstance(d, D.VirtualCdrom))
    assert isinstance(new[cdrom.controllerKey], D.ParaVirtualSCSIController)
    assert isinstance(cdrom.backing, D.VirtualCdrom.RemotePassthroughBackingInfo)


def test_physical_rdm_left_out_virtual_rdm_becomes_flat() -> None:
    r = build(load("rdm_independent"))
    assert 2001 not in r.disk_key_map
    assert r.left_out_disks == {2001: "physical-mode RDM left out: its LUN is not in the backup"}
    new = spec_devices(r)
    # the shared-bus controller stays: its sharing mode is part of the machine
    assert any(d.sharedBus == "physicalSharing" for d in new.values() if hasattr(d, "sharedBus"))
    vrdm = new[r.disk_key_map[2002]]
    assert isinstance(vrdm.backing, D.VirtualDisk.FlatVer2BackingInfo)
    assert vrdm.backing.thinProvisioned is True
    assert vrdm.capacityInBytes == 5 * 1024**3
    assert new[r.disk_key_map[2003]].backing.diskMode == "independent_persistent"
    assert new[r.disk_key_map[2004]].backing.diskMode == "independent_nonpersistent"
    assert any("independent disk created empty" in n for n in r.notes)

    flat = build(load("rdm_independent"), physical_rdm="flat")
    assert flat.left_out_disks == {}
    prdm = spec_devices(flat)[flat.disk_key_map[2001]]
    assert isinstance(prdm.backing, D.VirtualDisk.FlatVer2BackingInfo)
    assert prdm.capacityInBytes == 10 * 1024**3


def test_identity_kept_only_when_asked() -> None:
    cfg = load("multi_controller")
    r = build(cfg, keep_mac=True, keep_uuid=True)
    assert (r.spec.uuid, r.spec.instanceUuid) == (cfg.uuid, cfg.instanceUuid)
    macs = {
        d.macAddress: d.addressType
        for d in spec_devices(r).values()
        if isinstance(d, D.VirtualEthernetCard)
    }
    assert macs == {"00:50:56:aa:bb:cc": "manual", "00:0c:29:36:63:62": "manual"}


def test_dvs_port_of_the_old_vm_is_not_claimed() -> None:
    cfg = load("sim_vm0")
    nic = next(d for d in cfg.hardware.device if isinstance(d, D.VirtualEthernetCard))
    nic.backing.port.portKey = "17"
    nic.backing.port.connectionCookie = 12345
    new_nic = next(
        d for d in spec_devices(build(cfg)).values() if isinstance(d, D.VirtualEthernetCard)
    )
    port = new_nic.backing.port
    assert (port.switchUuid, port.portgroupKey) == (
        nic.backing.port.switchUuid,
        nic.backing.port.portgroupKey,
    )
    assert port.portKey is None and port.connectionCookie is None


def test_extra_config_filtered() -> None:
    r = build(load("multi_controller"))
    keys = {o.key for o in r.spec.extraConfig}
    assert {"disk.EnableUUID", "guestinfo.metadata", "svga.present"} <= keys
    for dropped in (
        "nvram",
        "sched.swap.derivedName",
        "ethernet0.generatedAddress",
        "ethernet0.generatedAddressOffset",
        "monitor.phys_bits_used",
        "vmci0.id",
        "scsi0:0.ctkEnabled",
        "migrate.hostLog",
    ):
        assert dropped not in keys


def test_overrides_disk_files_and_folder() -> None:
    cfg = load("multi_controller")
    r = build(
        cfg,
        name="web01",
        datastore_name="ds2",
        folder_path_hint="restores/web01",
        disk_files={2001: "restores/web01/data.vmdk", 16000: "[ds3] x/y.vmdk"},
    )
    assert r.spec.files.vmPathName == "[ds2] restores/web01/web01.vmx"
    new = spec_devices(r)
    assert new[r.disk_key_map[2001]].backing.fileName == "[ds2] restores/web01/data.vmdk"
    assert new[r.disk_key_map[16000]].backing.fileName == "[ds3] x/y.vmdk"
    assert new[r.disk_key_map[32000]].backing.fileName == "[ds2]"
    with pytest.raises(ConfigSpecError, match=r"\[4001\]"):
        build(cfg, disk_files={4001: "x.vmdk"})
    with pytest.raises(ConfigSpecError, match="datastore"):
        build(cfg, datastore_name="[bad]")


def test_boot_order_follows_new_keys() -> None:
    cfg = load("multi_controller")
    r = build(cfg)
    order = r.spec.bootOptions.bootOrder
    assert [type(e) for e in order] == [
        vim.vm.BootOptions.BootableDiskDevice,
        vim.vm.BootOptions.BootableEthernetDevice,
    ]
    new = spec_devices(r)
    assert order[0].deviceKey == r.disk_key_map[255511522]
    assert isinstance(new[order[1].deviceKey], D.VirtualVmxnet3)
    assert r.spec.bootOptions.bootDelay == 2000


def test_dangling_controller_is_an_error_naming_the_device() -> None:
    cfg = load("rdm_independent")
    cfg.hardware.device = [d for d in cfg.hardware.device if d.key != 1000]
    with pytest.raises(ConfigSpecError, match=r"os \(key 2000\).*key 1000"):
        build(cfg)


def test_source_config_is_not_modified() -> None:
    cfg = load("multi_controller")
    before = serialize_config(cfg)
    build(cfg, keep_mac=True)
    assert serialize_config(cfg) == before


def test_copied_fields_have_the_same_type_on_both_sides() -> None:
    for attr in COPIED_FIELDS:
        info = vim.vm.ConfigInfo._GetPropertyInfo(attr).type
        spec = vim.vm.ConfigSpec._GetPropertyInfo(attr).type
        assert info is spec, attr


def test_video_card_settings_reapplied_by_an_edit() -> None:
    cfg = load("sim_vm0")
    saved = next(d for d in cfg.hardware.device if isinstance(d, D.VirtualVideoCard))
    current = copy.deepcopy(saved)
    assert video_card_edit_spec(cfg, [current]) is None
    saved.videoRamSizeInKB = 16384
    saved.numDisplays = 2
    edit = video_card_edit_spec(cfg, [current])
    assert edit is not None
    (change,) = edit.deviceChange
    assert change.operation == "edit" and change.device.key == current.key
    assert (change.device.videoRamSizeInKB, change.device.numDisplays) == (16384, 2)
    assert video_card_edit_spec(cfg, []) is None


# --- end to end against the simulator -------------------------------------------------


@pytest.mark.slow
def test_create_vm_from_saved_config(vcsim_fresh: Simulator) -> None:
    u = urlparse(vcsim_fresh.url)
    si = SmartConnect(
        host=u.hostname,
        port=u.port,
        user=vcsim_fresh.user,
        pwd=vcsim_fresh.password,
        protocol=u.scheme,
        disableSslCertValidation=True,
    )
    try:
        vm = si.RetrieveContent().searchIndex.FindByInventoryPath("DC0/vm/DC0_H0_VM0")
        # what a restore does: the ConfigInfo comes back from its saved text
        saved = deserialize_config(serialize_config(vm.config))
        video = next(d for d in saved.hardware.device if isinstance(d, D.VirtualVideoCard))
        video.videoRamSizeInKB = 16384
        cases = {"restored": saved, "restored-multi": load("multi_controller")}
        for name, cfg in cases.items():
            r = build_config_spec(cfg, name=name, datastore_name="LocalDS_0")
            task = vm.parent.CreateVM_Task(
                config=r.spec, pool=vm.resourcePool, host=vm.runtime.host
            )
            WaitForTask(task)
            new_vm = task.info.result
            assert new_vm.name == name
            got = new_vm.config
            want_disks = [d for d in cfg.hardware.device if isinstance(d, D.VirtualDisk)]
            got_disks = [d for d in got.hardware.device if isinstance(d, D.VirtualDisk)]
            assert sorted(d.capacityInBytes or d.capacityInKB * 1024 for d in want_disks) == sorted(
                d.capacityInBytes for d in got_disks
            )
            assert {(d.backing.thinProvisioned, d.backing.eagerlyScrub) for d in got_disks} == {
                (bool(d.backing.thinProvisioned), bool(d.backing.eagerlyScrub)) for d in want_disks
            }
            assert all(d.backing.fileName.startswith(f"[LocalDS_0] {name}/") for d in got_disks)
            want_nics = sorted(
                type(d).__name__
                for d in cfg.hardware.device
                if isinstance(d, D.VirtualEthernetCard)
            )
            got_nics = [d for d in got.hardware.device if isinstance(d, D.VirtualEthernetCard)]
            assert sorted(type(d).__name__ for d in got_nics) == want_nics
            assert got.uuid != cfg.uuid and got.instanceUuid != cfg.instanceUuid
            assert len({d.macAddress for d in got_nics} & {vm_mac(vm)}) == 0
            assert len(got.hardware.device) == len(cfg.hardware.device) - len(r.left_out_disks)
            edit = video_card_edit_spec(cfg, list(got.hardware.device))
            if name == "restored":
                assert edit is not None
                WaitForTask(new_vm.ReconfigVM_Task(edit))
                cards = [
                    d for d in new_vm.config.hardware.device if isinstance(d, D.VirtualVideoCard)
                ]
                assert [c.videoRamSizeInKB for c in cards] == [16384]
            else:
                assert edit is None
    finally:
        Disconnect(si)


def vm_mac(vm: vim.VirtualMachine) -> str:
    return next(d.macAddress for d in vm.config.hardware.device if isinstance(d, D.VirtualE1000))
