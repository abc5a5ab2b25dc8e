"""Re-record the ConfigInfo samples: `.venv/bin/python tests/protector/samples/record.py`.

`sim_vm0.xml` is the simulator's DC0_H0_VM0 as read over SOAP. The other shapes start
from that same object and are edited here the way real vCenter configurations look
(several controllers, RDMs, independent disks, ISO CD-ROM, cpuFeatureMask), then saved
with protector.vsphere.vmconfig.serialize_config. The simulator's datastore MoRef embeds its
temporary directory, so it is replaced by a stable value to keep the files reproducible.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from urllib.parse import urlparse

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from protector.devtools.simulator import Simulator
from protector.vsphere.vmconfig import deserialize_config, serialize_config

HERE = Path(__file__).resolve().parent
DS_MOREF = "datastore-localds0"
D = vim.vm.device


def _pci(dev: D.VirtualDevice, unit: int, slot: int) -> None:
    dev.controllerKey = 100
    dev.unitNumber = unit
    dev.slotInfo = D.VirtualDevice.PciBusSlotInfo(pciSlotNumber=slot)


def _info(label: str) -> vim.Description:
    return vim.Description(label=label, summary=label)


def _flat(name: str, *, thin: bool, eager: bool, mode: str = "persistent") -> object:
    return D.VirtualDisk.FlatVer2BackingInfo(
        fileName=name,
        datastore=vim.Datastore(DS_MOREF),
        diskMode=mode,
        thinProvisioned=thin,
        eagerlyScrub=eager,
        split=False,
        writeThrough=False,
        uuid="6000C29a-0000-0000-0000-" + hashlib.sha256(name.encode()).hexdigest()[:12],
        changeId="52 aa bb cc dd ee ff 00-11 22 33 44 55 66 77 88/4",
    )


def _disk(key: int, ctrl: int, unit: int, backing: object, gib: int, label: str) -> D.VirtualDisk:
    return D.VirtualDisk(
        key=key,
        deviceInfo=_info(label),
        backing=backing,
        controllerKey=ctrl,
        unitNumber=unit,
        capacityInKB=gib * 1024 * 1024,
        capacityInBytes=gib * 1024**3,
    )


def multi_controller(base: vim.vm.ConfigInfo) -> vim.vm.ConfigInfo:
    """PVSCSI + LSI SAS + SATA + NVMe, a snapshot delta disk, two NICs, ISO CD-ROM, floppy."""
    cfg = copy.deepcopy(base)
    cfg.name = "multi"
    cfg.guestId = "ubuntu64Guest"
    cfg.firmware = "efi"
    cfg.hardware.numCPU = 4
    cfg.hardware.numCoresPerSocket = 2
    cfg.hardware.memoryMB = 4096
    cfg.cpuHotAddEnabled = True
    cfg.annotation = "crafted: several controllers"
    devices = [d for d in cfg.hardware.device if not isinstance(d, D.VirtualCdrom)]
    pvscsi = next(d for d in devices if isinstance(d, D.ParaVirtualSCSIController))
    _pci(pvscsi, 3, 160)
    old_disk = next(d for d in devices if isinstance(d, D.VirtualDisk))
    # The shape a snapshot's configuration has: the delta disk with its base as parent.
    old_disk.backing.fileName = "[LocalDS_0] multi/multi-000001.vmdk"
    old_disk.backing.thinProvisioned = True
    old_disk.backing.parent = _flat("[LocalDS_0] multi/multi.vmdk", thin=True, eager=False)
    old_disk.capacityInBytes = 0  # an older configuration: only capacityInKB set
    lsi = D.VirtualLsiLogicSASController(
        key=1001, deviceInfo=_info("SCSI controller 1"), busNumber=1, sharedBus="noSharing"
    )
    _pci(lsi, 4, 224)
    sata = D.VirtualAHCIController(key=15000, deviceInfo=_info("SATA controller 0"), busNumber=0)
    _pci(sata, 24, 33)
    nvme = D.VirtualNVMEController(key=31000, deviceInfo=_info("NVME controller 0"), busNumber=0)
    _pci(nvme, 25, 256)
    devices += [lsi, sata, nvme]
    devices.append(
        _disk(
            2001, 1001, 0, _flat("[LocalDS_0] multi/multi_1.vmdk", thin=False, eager=True), 2, "d1"
        )
    )
    devices.append(
        _disk(
            16000,
            15000,
            0,
            _flat("[LocalDS_0] multi/multi_2.vmdk", thin=False, eager=False),
            1,
            "d2",
        )
    )
    devices.append(
        _disk(
            32000,
            31000,
            3,
            _flat("[LocalDS_0] multi/multi_3.vmdk", thin=True, eager=False),
            3,
            "d3",
        )
    )
    devices.append(
        D.VirtualCdrom(
            key=3002,
            deviceInfo=_info("CD/DVD drive 1"),
            backing=D.VirtualCdrom.IsoBackingInfo(
                fileName="[LocalDS_0] iso/ubuntu-22.04.iso", datastore=vim.Datastore(DS_MOREF)
            ),
            connectable=D.VirtualDevice.ConnectInfo(
                startConnected=True, allowGuestControl=True, connected=False
            ),
            controllerKey=201,
            unitNumber=0,
        )
    )
    devices.append(
        D.VirtualFloppy(
            key=8000,
            deviceInfo=_info("Floppy drive 1"),
            backing=D.VirtualFloppy.ImageBackingInfo(fileName="[LocalDS_0] multi/boot.flp"),
            connectable=D.VirtualDevice.ConnectInfo(
                startConnected=False, allowGuestControl=True, connected=False
            ),
            controllerKey=400,
            unitNumber=0,
        )
    )
    vmxnet3 = D.VirtualVmxnet3(
        key=4001,
        deviceInfo=_info("Network adapter 2"),
        backing=D.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="VM Network", network=vim.Network("network-7")
        ),
        connectable=D.VirtualDevice.ConnectInfo(
            startConnected=True, allowGuestControl=True, connected=True
        ),
        addressType="manual",
        macAddress="00:50:56:aa:bb:cc",
        wakeOnLanEnabled=True,
    )
    _pci(vmxnet3, 8, 192)
    devices.append(vmxnet3)
    cfg.hardware.device = devices
    cfg.cpuFeatureMask = [
        vim.host.CpuIdInfo(level=1, vendor="intel", ecx="---- ---- ---- ---- ---- ---- ---- --0-"),
        vim.host.CpuIdInfo(
            level=-2147483647, vendor="amd", edx="---- ---- ---- ---- ---- ---- ---- -0--"
        ),
    ]
    cfg.extraConfig = [
        vim.option.OptionValue(key=k, value=v)
        for k, v in [
            ("nvram", "multi.nvram"),
            ("sched.swap.derivedName", "/vmfs/volumes/5e1/multi/multi-7c1.vswp"),
            ("disk.EnableUUID", "TRUE"),
            ("guestinfo.metadata", "e30="),
            ("ethernet0.generatedAddress", "00:0c:29:36:63:62"),
            ("ethernet0.generatedAddressOffset", "0"),
            ("monitor.phys_bits_used", "43"),
            ("vmci0.id", "1234567"),
            ("scsi0:0.ctkEnabled", "TRUE"),
            ("migrate.hostLog", "multi-1.hlog"),
            ("svga.present", "TRUE"),
        ]
    ]
    cfg.bootOptions = vim.vm.BootOptions(
        bootDelay=2000,
        bootOrder=[
            vim.vm.BootOptions.BootableDiskDevice(deviceKey=old_disk.key),
            vim.vm.BootOptions.BootableEthernetDevice(deviceKey=4001),
        ],
    )
    return cfg


def rdm_independent(base: vim.vm.ConfigInfo) -> vim.vm.ConfigInfo:
    """LSI Logic parallel with a flat disk, physical + virtual RDMs, independent disks."""
    cfg = copy.deepcopy(base)
    cfg.name = "rdmvm"
    cfg.guestId = "windows9Server64Guest"
    keep = [
        d
        for d in cfg.hardware.device
        if not isinstance(
            d, (D.VirtualDisk, D.VirtualCdrom, D.VirtualSCSIController, D.VirtualEthernetCard)
        )
    ]
    lsi = D.VirtualLsiLogicController(
        key=1000, deviceInfo=_info("SCSI controller 0"), busNumber=0, sharedBus="noSharing"
    )
    _pci(lsi, 3, 16)
    shared = D.ParaVirtualSCSIController(
        key=1001, deviceInfo=_info("SCSI controller 1"), busNumber=1, sharedBus="physicalSharing"
    )
    _pci(shared, 4, 224)

    def rdm(name: str, mode: str, naa: str) -> object:
        return D.VirtualDisk.RawDiskMappingVer1BackingInfo(
            fileName=name,
            datastore=vim.Datastore(DS_MOREF),
            compatibilityMode=mode,
            deviceName=f"vml.0200000000{naa}",
            lunUuid=f"0200000000{naa}",
            diskMode="independent_persistent" if mode == "physicalMode" else "persistent",
            uuid="6000C29f-rdm-" + naa[-6:],
        )

    devices = [
        *keep,
        lsi,
        shared,
        _disk(
            2000, 1000, 0, _flat("[LocalDS_0] rdmvm/rdmvm.vmdk", thin=False, eager=False), 4, "os"
        ),
        _disk(
            2001,
            1001,
            0,
            rdm("[LocalDS_0] rdmvm/rdmvm_1.vmdk", "physicalMode", "600a0b800012345678"),
            10,
            "rdm-p",
        ),
        _disk(
            2002,
            1000,
            1,
            rdm("[LocalDS_0] rdmvm/rdmvm_2.vmdk", "virtualMode", "600a0b800087654321"),
            5,
            "rdm-v",
        ),
        _disk(
            2003,
            1000,
            2,
            _flat(
                "[LocalDS_0] rdmvm/rdmvm_3.vmdk",
                thin=True,
                eager=False,
                mode="independent_persistent",
            ),
            1,
            "scratch",
        ),
        _disk(
            2004,
            1000,
            3,
            _flat(
                "[LocalDS_0] rdmvm/rdmvm_4.vmdk",
                thin=False,
                eager=True,
                mode="independent_nonpersistent",
            ),
            1,
            "reset",
        ),
    ]
    e1000e = D.VirtualE1000e(
        key=4000,
        deviceInfo=_info("Network adapter 1"),
        backing=D.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="VM Network", network=vim.Network("network-7")
        ),
        addressType="assigned",
        macAddress="00:50:56:01:02:03",
    )
    _pci(e1000e, 7, 192)
    devices.append(e1000e)
    cfg.hardware.device = devices
    return cfg


def main() -> None:
    with Simulator() as sim:
        u = urlparse(sim.url)
        si = SmartConnect(
            host=u.hostname,
            port=u.port,
            user=sim.user,
            pwd=sim.password,
            protocol=u.scheme,
            disableSslCertValidation=True,
        )
        try:
            content = si.RetrieveContent()
            vm = content.searchIndex.FindByInventoryPath("DC0/vm/DC0_H0_VM0")
            text = serialize_config(vm.config)
        finally:
            Disconnect(si)
    text = re.sub(r">[^<>]*govcsim-DC0-LocalDS_0-[^<>]*<", f">{DS_MOREF}<", text)
    base = deserialize_config(text)
    shapes = {
        "sim_vm0": base,
        "multi_controller": multi_controller(base),
        "rdm_independent": rdm_independent(base),
    }
    for name, cfg in shapes.items():
        (HERE / f"{name}.xml").write_text(serialize_config(cfg) + "\n")
        print(f"wrote {name}.xml")


if __name__ == "__main__":
    main()
