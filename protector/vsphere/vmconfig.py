"""Capture a VM's ConfigInfo faithfully, and summarise its disks for backup and restore.

The saved form is pyvmomi's own SOAP encoding (`<obj xsi:type="VirtualMachineConfigInfo">`):
every data object carries its xsi:type, so backings, controller subclasses and MoRefs come
back as the same classes. pyvmomi's JSON encoder has no decoder, which is why we use SOAP.
We serialise against the newest vim version pyvmomi knows so no property is filtered out;
a pyvmomi that does not know a saved type or property refuses the file (ConfigFormatError)
rather than dropping part of the machine silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pyVmomi import SoapAdapter, VmomiSupport, vim

SERIALIZE_VERSION = VmomiSupport.newestVersions.GetName("vim")

# vm-000001.vmdk → vm.vmdk: the name a snapshot's delta disk gets from its base disk.
_DELTA_SUFFIX = re.compile(r"^(?P<stem>.*)-\d{6}(?P<ext>\.vmdk)$")

INDEPENDENT_MODES = frozenset({"independent_persistent", "independent_nonpersistent"})
SKIP_PHYSICAL_RDM = "physical-mode RDM cannot be snapshotted"
SKIP_INDEPENDENT = "independent disk is not included in snapshots"


class ConfigFormatError(ValueError):
    """Saved configuration text that is not a VirtualMachineConfigInfo."""


def serialize_config(config_info: vim.vm.ConfigInfo) -> str:
    """Encode a ConfigInfo as self-describing XML text (round-trips through deserialize_config)."""
    if not isinstance(config_info, vim.vm.ConfigInfo):
        raise TypeError(f"expected vim.vm.ConfigInfo, got {type(config_info).__name__}")
    data = SoapAdapter.Serialize(config_info, version=SERIALIZE_VERSION)
    return data.decode("utf-8") if isinstance(data, bytes) else data


def deserialize_config(text: str, *, source: str = "saved configuration") -> vim.vm.ConfigInfo:
    """Decode text from serialize_config; `source` names the file in errors."""
    try:
        obj = SoapAdapter.Deserialize(text.encode("utf-8"), vim.vm.ConfigInfo)
    except Exception as exc:  # the parser raises expat, KeyError and TypeError alike
        raise ConfigFormatError(
            f"{source}: cannot decode the saved configuration ({type(exc).__name__}: {exc});"
            " unknown names mean it was written by a newer pyvmomi"
        ) from exc
    if not isinstance(obj, vim.vm.ConfigInfo):
        raise ConfigFormatError(
            f"{source}: holds a {type(obj).__name__}, not a VirtualMachineConfigInfo"
        )
    return obj


@dataclass(frozen=True)
class DiskInfo:
    key: int
    label: str
    controller_key: int | None
    unit_number: int | None
    address: str | None  # "scsi0:1"; None when the controller is not in the configuration
    capacity_bytes: int
    backing: str  # flat | sparse | rdm-virtual | rdm-physical | other
    file_name: str
    datastore: str | None  # MoRef value, e.g. "datastore-12"
    base_name: str  # the file name without a snapshot's -NNNNNN delta suffix
    provisioning: str | None  # thin | eager-zeroed-thick | lazy-zeroed-thick; None for RDM/other
    disk_mode: str | None
    uuid: str | None
    change_id: str | None
    skip_reason: str | None


def controller_prefix(controller: vim.vm.device.VirtualDevice) -> str | None:
    """The bus name used in disk addresses and in .vmx keys ("scsi", "ide", "sata", "nvme")."""
    if isinstance(controller, vim.vm.device.VirtualSCSIController):
        return "scsi"
    if isinstance(controller, vim.vm.device.VirtualIDEController):
        return "ide"
    if isinstance(controller, vim.vm.device.VirtualSATAController):
        return "sata"
    if isinstance(controller, vim.vm.device.VirtualNVMEController):
        return "nvme"
    return None


def disk_capacity_bytes(disk: vim.vm.device.VirtualDisk) -> int:
    # capacityInBytes appeared in 5.5 and is unset (0) in some older configurations.
    return int(disk.capacityInBytes or 0) or int(disk.capacityInKB or 0) * 1024


def backing_kind(backing: Any) -> str:
    d = vim.vm.device.VirtualDisk
    if isinstance(backing, d.RawDiskMappingVer1BackingInfo):
        return "rdm-physical" if backing.compatibilityMode == "physicalMode" else "rdm-virtual"
    if isinstance(backing, (d.FlatVer2BackingInfo, d.FlatVer1BackingInfo)):
        return "flat"
    if isinstance(backing, (d.SparseVer2BackingInfo, d.SparseVer1BackingInfo)):
        return "sparse"
    if isinstance(backing, d.SeSparseBackingInfo):
        return "sparse"
    return "other"


def provisioning_of(backing: Any) -> str | None:
    kind = backing_kind(backing)
    if kind == "sparse":
        return "thin"
    if kind != "flat":
        return None
    if getattr(backing, "thinProvisioned", None):
        return "thin"
    if getattr(backing, "eagerlyScrub", None):
        return "eager-zeroed-thick"
    return "lazy-zeroed-thick"


def base_disk_name(backing: Any) -> str:
    """The base disk's name: the root of the parent chain, or the name without -NNNNNN."""
    root = backing
    while getattr(root, "parent", None) is not None and getattr(root.parent, "fileName", None):
        root = root.parent
    name = getattr(root, "fileName", "") or ""
    if root is backing:
        m = _DELTA_SUFFIX.match(name)
        if m:
            return m.group("stem") + m.group("ext")
    return name


def skip_reason_of(backing: Any) -> str | None:
    if backing_kind(backing) == "rdm-physical":
        return SKIP_PHYSICAL_RDM
    if getattr(backing, "diskMode", None) in INDEPENDENT_MODES:
        return SKIP_INDEPENDENT
    return None


def devices_of(config_info: vim.vm.ConfigInfo) -> list[vim.vm.device.VirtualDevice]:
    hardware = config_info.hardware
    return list(hardware.device) if hardware is not None and hardware.device else []


def disk_summaries(config_info: vim.vm.ConfigInfo) -> list[DiskInfo]:
    """One DiskInfo per VirtualDisk, in device order."""
    devices = devices_of(config_info)
    by_key = {d.key: d for d in devices}
    out: list[DiskInfo] = []
    for dev in devices:
        if not isinstance(dev, vim.vm.device.VirtualDisk):
            continue
        backing = dev.backing
        controller = by_key.get(dev.controllerKey) if dev.controllerKey is not None else None
        prefix = controller_prefix(controller) if controller is not None else None
        address = None
        if prefix is not None and dev.unitNumber is not None:
            address = f"{prefix}{controller.busNumber}:{dev.unitNumber}"
        datastore = getattr(backing, "datastore", None)
        out.append(
            DiskInfo(
                key=dev.key,
                label=dev.deviceInfo.label if dev.deviceInfo else f"disk {dev.key}",
                controller_key=dev.controllerKey,
                unit_number=dev.unitNumber,
                address=address,
                capacity_bytes=disk_capacity_bytes(dev),
                backing=backing_kind(backing),
                file_name=getattr(backing, "fileName", "") or "",
                datastore=datastore._moId if datastore is not None else None,
                base_name=base_disk_name(backing),
                provisioning=provisioning_of(backing),
                disk_mode=getattr(backing, "diskMode", None),
                uuid=getattr(backing, "uuid", None),
                change_id=getattr(backing, "changeId", None),
                skip_reason=skip_reason_of(backing),
            )
        )
    return out
