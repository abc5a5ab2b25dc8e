"""Saved ConfigInfo → ConfigSpec for CreateVM_Task (restore as a new VM). Pure: no I/O.

Follows the seed's "Using VirtualMachineConfigInfo to Create a Virtual Machine":
- the default devices (IDE/PS2/PCI/SIO controllers, keyboard, VMCI, pointing device) are
  left out: vCenter creates them itself and a spec that adds them usually fails. Every VM
  also gets exactly one video card of its own, so the saved one is left out too and its
  settings are reapplied afterwards with `video_card_edit_spec` (an edit of the new card);
- every other device is added with a negative key, and each device's controllerKey points
  to its controller's new negative key. Devices on a default controller keep the key that
  vCenter gives that controller (IDE n → 200+n, SIO → 400, as the seed's CD-ROM on 200);
  devices on the PCI bus get no controllerKey/unitNumber, so vCenter places them (their
  pciSlotNumber is kept, so guest NIC and disk names stay stable);
- `cpuFeatureMask` entries become CpuIdInfoSpec (ArrayUpdateSpec) entries with operation add;
- everything else that describes the machine is copied; what identifies the *old* VM
  (uuid, instanceUuid, MAC addresses, DVS port, nvram file, swap file) is not.

Disks are created empty (fileOperation create) with the saved capacity and provisioning;
the restore then writes the saved data into them, matched through `disk_key_map`.
A virtual-mode RDM was snapshotted and backed up like any disk, so it comes back as a
thin flat disk holding its data. A physical-mode RDM has no data in the backup and
re-mapping its LUN to a second VM would risk corrupting it: it is left out (with a note)
unless `physical_rdm="flat"` asks for an empty flat disk of the same size in its place.
Independent disks are recreated empty in their own mode: their data is not in snapshots.

Why over 400 lines: one rule set kept together — the tables of what is copied, dropped or
rebuilt (~100 lines) and build_config_spec's single pass over the devices share the key
remapping; split, each half would need the other's tables to be read.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pyVmomi import vim

from protector.vsphere.dspath import datastore_path
from protector.vsphere.vmconfig import (
    backing_kind,
    devices_of,
    disk_capacity_bytes,
    provisioning_of,
)

D = vim.vm.device

DEFAULT_DEVICE_TYPES: tuple[type, ...] = (
    D.VirtualIDEController,
    D.VirtualPS2Controller,
    D.VirtualPCIController,
    D.VirtualSIOController,
    D.VirtualKeyboard,
    D.VirtualVMCIDevice,
    D.VirtualPointingDevice,
)
# Key vCenter gives each default controller of a new VM, by bus number; None = "let it choose".
_DEFAULT_CONTROLLER_KEY_BASE: dict[type, int | None] = {
    D.VirtualIDEController: 200,
    D.VirtualPS2Controller: 300,
    D.VirtualSIOController: 400,
    D.VirtualPCIController: None,
}

# Same name and type on ConfigInfo and ConfigSpec; copied as they are.
COPIED_FIELDS = (
    "version",
    "guestId",
    "alternateGuestName",
    "annotation",
    "flags",
    "consolePreferences",
    "rebootPowerOff",
    "vcpuConfig",
    "cpuAllocation",
    "memoryAllocation",
    "latencySensitivity",
    "memoryHotAddEnabled",
    "cpuHotAddEnabled",
    "cpuHotRemoveEnabled",
    "swapPlacement",
    "vAssertsEnabled",
    "changeTrackingEnabled",
    "firmware",
    "maxMksConnections",
    "guestAutoLockEnabled",
    "memoryReservationLockedToMax",
    "nestedHVEnabled",
    "vPMCEnabled",
    "messageBusTunnelEnabled",
    "migrateEncryption",
    "sgxInfo",
    "ftEncryptionMode",
    "guestMonitoringModeInfo",
    "sevEnabled",
    "pmemFailoverEnabled",
    "vmxStatsCollectionEnabled",
    "vmOpNotificationToAppEnabled",
    "vmOpNotificationTimeout",
    "deviceSwap",
    "fixedPassthruHotPlugEnabled",
    "tdxEnabled",
    "sevSnpEnabled",
)
# ConfigInfo.hardware.<a> → ConfigSpec.<b>
HARDWARE_FIELDS = (
    ("numCPU", "numCPUs"),
    ("numCoresPerSocket", "numCoresPerSocket"),
    ("memoryMB", "memoryMB"),
    ("virtualICH7MPresent", "virtualICH7MPresent"),
    ("virtualSMCPresent", "virtualSMCPresent"),
    ("motherboardLayout", "motherboardLayout"),
    ("simultaneousThreads", "simultaneousThreads"),
)
TOOLS_FIELDS = (
    "afterPowerOn",
    "afterResume",
    "beforeGuestStandby",
    "beforeGuestShutdown",
    "beforeGuestReboot",
    "toolsUpgradePolicy",
    "syncTimeWithHostAllowed",
    "syncTimeWithHost",
)
# Set on the old VM but not carried over, with the reason given in the notes.
NOT_CARRIED = {
    "vAppConfig": "vApp options are not carried over (re-create them on the new VM)",
    "keyId": "the VM was encrypted: the new VM is created unencrypted",
    "cpuAffinity": "CPU affinity is host-specific and is not carried over",
    "ftInfo": "Fault Tolerance settings are not carried over",
    "repConfig": "vSphere Replication settings are not carried over",
    "managedBy": "the new VM is not marked as managed by the old VM's extension",
}

# extraConfig keys that belong to the old VM's identity or its last run, not its configuration.
EXTRA_CONFIG_DROP = re.compile(
    r"""^(
        nvram                                   # the old VM's NVRAM file name
      | sched\.swap\.derivedName                # its swap file, chosen at power-on
      | uuid\.(bios|location|action)            # identity (uuid/instanceUuid are new)
      | vc\.uuid
      | vmci0\.id
      | ethernet\d+\.(generatedAddress|generatedAddressOffset)   # its MAC addresses
      | .*\.ctkEnabled | ctkEnabled             # CBT state follows changeTrackingEnabled
      | migrate\..* | vmotion\..*               # last migration's files and sizes
      | monitor\.phys_bits_used                 # measured on the last host
      | numa\.autosize\..*                      # cookies of the last power-on
      | (host|guest|user)CPUID\..*              # CPUID seen by the last run
      | checkpoint\..* | cleanShutdown | softPowerOff | replay\..*
      | toolsInstallManager\..*
    )$""",
    re.VERBOSE,
)


class ConfigSpecError(ValueError):
    """A saved configuration that cannot be turned into a ConfigSpec."""


@dataclass
class RebuiltSpec:
    spec: vim.vm.ConfigSpec
    disk_key_map: dict[int, int]  # saved disk key → negative key of the disk in spec
    notes: list[str] = field(default_factory=list)  # what was changed or left out, and why
    left_out_disks: dict[int, str] = field(default_factory=dict)  # saved disk key → reason


def _label(dev: Any) -> str:
    label = dev.deviceInfo.label if dev.deviceInfo is not None else ""
    return f"{label or type(dev).__name__} (key {dev.key})"


def _is_default_device(dev: Any) -> bool:
    return isinstance(dev, DEFAULT_DEVICE_TYPES)


def _default_controller_key(ctrl: Any) -> int | None:
    for cls, base in _DEFAULT_CONTROLLER_KEY_BASE.items():
        if isinstance(ctrl, cls):
            return None if base is None else base + int(ctrl.busNumber or 0)
    raise AssertionError(f"not a default controller: {type(ctrl).__name__}")


def _new_disk_backing(
    old: Any, kind: str, file_name: str
) -> vim.vm.device.VirtualDisk.FlatVer2BackingInfo:
    # RDM → flat and sparse → flat are thin: the restore writes only the allocated data.
    provisioning = provisioning_of(old) if kind == "flat" else "thin"
    backing = D.VirtualDisk.FlatVer2BackingInfo(
        fileName=file_name,
        diskMode=getattr(old, "diskMode", None) or "persistent",
        thinProvisioned=provisioning == "thin",
        eagerlyScrub=provisioning == "eager-zeroed-thick",
    )
    for name in ("sharing", "writeThrough"):
        value = getattr(old, name, None)
        if value is not None:
            setattr(backing, name, value)
    return backing


def _empty_removable_backing(dev: Any) -> Any:
    if isinstance(dev, D.VirtualCdrom):
        return D.VirtualCdrom.RemotePassthroughBackingInfo(
            deviceName="", exclusive=False, useAutoDetect=False
        )
    return D.VirtualFloppy.RemoteDeviceBackingInfo(deviceName="", useAutoDetect=False)


def _nic_backing(old: Any) -> Any:
    backing = copy.deepcopy(old)
    if isinstance(backing, D.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        # The port (and its cookie) belongs to the old VM: ask for a port in the same group.
        backing.port = vim.dvs.PortConnection(
            switchUuid=old.port.switchUuid, portgroupKey=old.port.portgroupKey
        )
    return backing


def build_config_spec(
    config_info: vim.vm.ConfigInfo,
    *,
    name: str,
    datastore_name: str,
    folder_path_hint: str | None = None,
    disk_files: dict[int, str] | None = None,
    keep_mac: bool = False,
    keep_uuid: bool = False,
    keep_iso: bool = False,
    physical_rdm: Literal["skip", "flat"] = "skip",
) -> RebuiltSpec:
    """Build the CreateVM_Task spec for a new VM from a saved ConfigInfo.

    name: the new VM's name. datastore_name: where its files go; files.vmPathName is
    "[datastore_name]" so vCenter makes a directory after the name, or
    "[datastore_name] <folder_path_hint>/<name>.vmx" when a directory is given.
    disk_files: saved disk key → datastore path for that disk ("[ds] dir/x.vmdk", or a
    path on datastore_name); other disks get "[datastore_name]" and vCenter names them.
    keep_mac: keep each NIC's MAC (as addressType manual); otherwise all are generated,
    since the old VM may still be on the network. keep_uuid: keep uuid and instanceUuid.
    keep_iso: keep ISO/image backings of CD-ROMs and floppies (else they are empty).
    """
    if not isinstance(config_info, vim.vm.ConfigInfo):
        raise ConfigSpecError(f"expected vim.vm.ConfigInfo, got {type(config_info).__name__}")
    if not name:
        raise ConfigSpecError("the new VM needs a name")
    if not datastore_name or "[" in datastore_name or "]" in datastore_name:
        raise ConfigSpecError(f"invalid datastore name {datastore_name!r}")
    if physical_rdm not in ("skip", "flat"):
        raise ConfigSpecError(f"physical_rdm must be 'skip' or 'flat', not {physical_rdm!r}")
    if config_info.hardware is None:
        raise ConfigSpecError(f"configuration of {config_info.name!r} has no hardware section")
    disk_files = dict(disk_files or {})
    notes: list[str] = []

    spec = vim.vm.ConfigSpec(name=name)
    for attr in COPIED_FIELDS:
        value = getattr(config_info, attr, None)
        if value is not None and value != []:
            setattr(spec, attr, copy.deepcopy(value))
    for src, dst in HARDWARE_FIELDS:
        value = getattr(config_info.hardware, src, None)
        if value is not None:
            setattr(spec, dst, value)
    if config_info.defaultPowerOps is not None:
        spec.powerOpInfo = copy.deepcopy(config_info.defaultPowerOps)
    if config_info.tools is not None:
        spec.tools = vim.vm.ToolsConfigInfo(
            **{
                f: getattr(config_info.tools, f)
                for f in TOOLS_FIELDS
                if getattr(config_info.tools, f, None) is not None
            }
        )
    if keep_uuid:
        spec.uuid = config_info.uuid
        spec.instanceUuid = config_info.instanceUuid
    vm_path = f"[{datastore_name}]"
    if folder_path_hint:
        vm_path = f"[{datastore_name}] {folder_path_hint.strip('/')}/{name}.vmx"
    spec.files = vim.vm.FileInfo(vmPathName=vm_path)

    spec.extraConfig = [
        vim.option.OptionValue(key=o.key, value=o.value)
        for o in config_info.extraConfig or []
        if not EXTRA_CONFIG_DROP.match(o.key)
    ]
    spec.cpuFeatureMask = [
        vim.vm.ConfigSpec.CpuIdInfoSpec(operation="add", info=copy.deepcopy(info))
        for info in config_info.cpuFeatureMask or []
    ]
    for attr, why in NOT_CARRIED.items():
        if getattr(config_info, attr, None):
            notes.append(why)

    devices = devices_of(config_info)
    by_key = {d.key: d for d in devices}
    unknown = set(disk_files) - {d.key for d in devices if isinstance(d, D.VirtualDisk)}
    if unknown:
        raise ConfigSpecError(f"disk_files names keys that are not disks: {sorted(unknown)}")

    # Controllers first: vCenter resolves negative controller keys in list order.
    ordered = sorted(devices, key=lambda d: not isinstance(d, D.VirtualController))
    key_map: dict[int, int] = {}
    next_key = -100
    kept: list[Any] = []
    left_out: dict[int, str] = {}
    for dev in ordered:
        if _is_default_device(dev):
            continue
        if isinstance(dev, D.VirtualVideoCard):
            continue  # see video_card_edit_spec
        if isinstance(dev, D.VirtualPCIPassthrough) and isinstance(
            dev.backing, D.VirtualPCIPassthrough.DeviceBackingInfo
        ):
            notes.append(f"{_label(dev)}: PCI passthrough of a host device left out")
            continue
        if isinstance(dev, D.VirtualUSB):
            notes.append(f"{_label(dev)}: USB device of a host or client left out")
            continue
        if (
            isinstance(dev, D.VirtualDisk)
            and backing_kind(dev.backing) == "rdm-physical"
            and physical_rdm == "skip"
        ):
            reason = "physical-mode RDM left out: its LUN is not in the backup"
            left_out[dev.key] = reason
            notes.append(f"{_label(dev)}: {reason}")
            continue
        key_map[dev.key] = next_key
        next_key -= 1
        kept.append(dev)

    changes: list[vim.vm.device.VirtualDeviceSpec] = []
    disk_key_map: dict[int, int] = {}
    for old in kept:
        dev = copy.deepcopy(old)
        dev.key = key_map[old.key]
        dev.deviceInfo = None  # vCenter writes labels and summaries of its own
        if isinstance(dev, D.VirtualController):
            dev.device = []  # the server rebuilds the list from the devices' controllerKey
        _reattach(dev, old, by_key, key_map)
        op = vim.vm.device.VirtualDeviceSpec(operation="add", device=dev)
        if isinstance(dev, D.VirtualDisk):
            kind = backing_kind(old.backing)
            if kind not in ("flat", "sparse", "rdm-virtual", "rdm-physical"):
                raise ConfigSpecError(
                    f"{_label(old)}: cannot recreate a disk with a "
                    f"{type(old.backing).__name__} backing"
                )
            capacity = disk_capacity_bytes(old)
            if capacity <= 0:
                raise ConfigSpecError(f"{_label(old)}: saved capacity is {capacity} bytes")
            file_name = datastore_path(
                datastore_name, disk_files.get(old.key, f"[{datastore_name}]")
            )
            dev.backing = _new_disk_backing(old.backing, kind, file_name)
            dev.capacityInBytes = capacity
            dev.capacityInKB = -(-capacity // 1024)
            for attr in (
                "vDiskId",
                "iofilter",
                "vFlashCacheConfigInfo",
                "nativeUnmanagedLinkedClone",
            ):
                setattr(dev, attr, None)
            op.fileOperation = "create"
            disk_key_map[old.key] = dev.key
            if kind == "rdm-virtual":
                notes.append(f"{_label(old)}: virtual-mode RDM restored as a thin flat disk")
            elif kind == "rdm-physical":
                notes.append(f"{_label(old)}: physical-mode RDM replaced by an empty flat disk")
            elif dev.backing.diskMode in ("independent_persistent", "independent_nonpersistent"):
                notes.append(f"{_label(old)}: independent disk created empty (not in backups)")
        elif isinstance(dev, D.VirtualEthernetCard):
            dev.backing = _nic_backing(old.backing)
            dev.externalId = None
            if keep_mac and old.macAddress:
                dev.addressType = "manual"
                dev.macAddress = old.macAddress
            else:
                dev.addressType = "generated"
                dev.macAddress = None
        elif isinstance(dev, (D.VirtualCdrom, D.VirtualFloppy)):
            is_file = isinstance(old.backing, D.VirtualDevice.FileBackingInfo)
            if not (keep_iso and is_file):
                if is_file:
                    notes.append(f"{_label(old)}: {old.backing.fileName} not attached")
                dev.backing = _empty_removable_backing(dev)
                dev.connectable = D.VirtualDevice.ConnectInfo(
                    startConnected=False, allowGuestControl=True, connected=False
                )
        if dev.connectable is not None:
            dev.connectable.status = None  # runtime state of the old VM
        changes.append(op)
    spec.deviceChange = changes

    if config_info.bootOptions is not None:
        spec.bootOptions = _boot_options(config_info.bootOptions, key_map, notes)
    return RebuiltSpec(spec=spec, disk_key_map=disk_key_map, notes=notes, left_out_disks=left_out)


def _reattach(dev: Any, old: Any, by_key: dict[int, Any], key_map: dict[int, int]) -> None:
    if old.controllerKey is None:
        return
    if old.controllerKey in key_map:
        dev.controllerKey = key_map[old.controllerKey]
        return
    ctrl = by_key.get(old.controllerKey)
    if ctrl is None or not _is_default_device(ctrl):
        raise ConfigSpecError(
            f"{_label(old)}: its controller (key {old.controllerKey}) is not in the configuration"
        )
    dev.controllerKey = _default_controller_key(ctrl)
    if dev.controllerKey is None:
        dev.unitNumber = None  # a PCI device: vCenter picks the unit from pciSlotNumber


def _boot_options(old: Any, key_map: dict[int, int], notes: list[str]) -> vim.vm.BootOptions:
    opts = copy.deepcopy(old)
    order = []
    for entry in opts.bootOrder or []:
        key = getattr(entry, "deviceKey", None)
        if key is None:
            order.append(entry)  # CD-ROM / floppy entries name no device
        elif key in key_map:
            entry.deviceKey = key_map[key]
            order.append(entry)
        else:
            notes.append(f"boot order: device key {key} is not in the new VM, entry left out")
    opts.bootOrder = order
    return opts


def video_card_edit_spec(
    config_info: vim.vm.ConfigInfo, new_devices: list[vim.vm.device.VirtualDevice]
) -> vim.vm.ConfigSpec | None:
    """A ReconfigVM_Task spec giving the new VM's video card the saved card's settings.

    None when there is nothing to change (no saved card, or no card on the new VM).
    """
    saved = next((d for d in devices_of(config_info) if isinstance(d, D.VirtualVideoCard)), None)
    current = next((d for d in new_devices if isinstance(d, D.VirtualVideoCard)), None)
    if saved is None or current is None:
        return None
    card = copy.deepcopy(current)
    changed = False
    for attr in (
        "videoRamSizeInKB",
        "numDisplays",
        "useAutoDetect",
        "enable3DSupport",
        "use3dRenderer",
        "graphicsMemorySizeInKB",
    ):
        value = getattr(saved, attr, None)
        if value is not None and getattr(card, attr, None) != value:
            setattr(card, attr, value)
            changed = True
    if not changed:
        return None
    return vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=card)]
    )
