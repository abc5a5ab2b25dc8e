"""Changed Block Tracking in the bundled simulator (vcsim/cbt.go), driven over SOAP by pyvmomi.

The contract the backup code relies on: changeIds at snapshots, the exact changed 64 KiB
blocks between two changeIds, `*` as the non-zero blocks, paging by window, FileFault for
what CBT cannot answer, and a new UUID part after CBT is turned off and on.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import SoapStubAdapter, vim, vmodl

from protector.devtools.simulator import Simulator

BLOCK = 64 * 1024
MIB = 1024 * 1024
CHANGE_ID = re.compile(r"^(52(?: [0-9a-f]{2}){7}-[0-9a-f]{2}(?: [0-9a-f]{2}){7})/(\d+)$")
VM_NAME = "DC0_H0_VM0"


def connect(sim: Simulator) -> vim.ServiceInstance:
    u = urlparse(sim.url)
    return SmartConnect(
        host=u.hostname,
        port=u.port,
        user=sim.user,
        pwd=sim.password,
        protocol="http",
        disableSslCertValidation=True,
    )


@pytest.fixture
def si(vcsim_fresh: Simulator) -> Iterator[vim.ServiceInstance]:
    si = connect(vcsim_fresh)
    yield si
    Disconnect(si)


def find_vm(si: vim.ServiceInstance, name: str = VM_NAME) -> vim.VirtualMachine:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


def disk_of(config: vim.vm.ConfigInfo) -> vim.vm.device.VirtualDisk:
    return next(d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def capacity(disk: vim.vm.device.VirtualDisk) -> int:
    # The simulator fills capacityInKB only.
    return disk.capacityInBytes or disk.capacityInKB * 1024


def flat_file(vm: vim.VirtualMachine, disk: vim.vm.device.VirtualDisk) -> Path:
    """A disk's data file: datastore summary.url / path, `.vmdk` → `-flat.vmdk`."""
    ds_name, rel = re.fullmatch(r"\[([^\]]+)\] (.+)", disk.backing.fileName).groups()
    ds = next(ds for ds in vm.datastore if ds.name == ds_name)
    return Path(ds.summary.url) / rel.replace(".vmdk", "-flat.vmdk", 1)


def run(task: vim.Task) -> object:
    assert WaitForTask(task) == "success"
    return task.info.result


def set_cbt(vm: vim.VirtualMachine, on: bool) -> None:
    run(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=on)))


def grow_disk(vm: vim.VirtualMachine, size: int) -> vim.vm.device.VirtualDisk:
    disk = disk_of(vm.config)
    disk.capacityInKB = size // 1024
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    run(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[change])))
    disk = disk_of(vm.config)
    assert capacity(disk) == size
    return disk


def snapshot(vm: vim.VirtualMachine, name: str) -> vim.vm.Snapshot:
    return run(vm.CreateSnapshot_Task(name=name, memory=False, quiesce=False))


def write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def changed_areas(
    vm: vim.VirtualMachine, snap: vim.vm.Snapshot | None, key: int, change_id: str, size: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Page through QueryChangedDiskAreas as a backup does: (extents, pages covered)."""
    extents: list[tuple[int, int]] = []
    pages: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        info = vm.QueryChangedDiskAreas(
            snapshot=snap, deviceKey=key, startOffset=offset, changeId=change_id
        )
        pages.append((info.startOffset, info.length))
        extents += [(a.start, a.length) for a in info.changedArea]
        assert info.length > 0
        offset = info.startOffset + info.length
    return extents, pages


def blocks(*ranges: tuple[int, int]) -> list[tuple[int, int]]:
    """Extents of the given (first block, block count) runs."""
    return [(first * BLOCK, count * BLOCK) for first, count in ranges]


def test_snapshots_get_change_ids_on_devices_of_their_own(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    assert vm.capability.changeTrackingSupported is True
    set_cbt(vm, True)
    assert vm.config.changeTrackingEnabled is True
    assert not disk_of(vm.config).backing.changeId  # set by the first snapshot, as on ESXi

    s1 = snapshot(vm, "s1")
    id1 = disk_of(s1.config).backing.changeId
    m1 = CHANGE_ID.match(id1)
    assert m1, id1
    assert disk_of(vm.config).backing.changeId == id1

    s2 = snapshot(vm, "s2")
    id2 = disk_of(s2.config).backing.changeId
    m2 = CHANGE_ID.match(id2)
    assert m2 and m2.group(1) == m1.group(1) and int(m2.group(2)) > int(m1.group(2))
    assert disk_of(vm.config).backing.changeId == id2
    # The first snapshot's devices are its own: they kept their changeId.
    assert disk_of(s1.config).backing.changeId == id1


def test_changed_areas_are_exactly_the_written_blocks(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    disk = grow_disk(vm, 4 * MIB)
    path = flat_file(vm, disk)
    set_cbt(vm, True)
    write(path, 2 * MIB, b"\x01" * BLOCK)  # written before the first snapshot
    s1 = snapshot(vm, "s1")
    id1 = disk_of(s1.config).backing.changeId

    write(path, 0, b"a")  # block 0
    write(path, 3 * BLOCK + 100, b"b" * 200)  # block 3
    write(path, 5 * BLOCK - 1, b"cd")  # blocks 4 and 5
    write(path, 10 * BLOCK, b"e" * 2 * BLOCK)  # blocks 10 and 11
    write(path, 4 * MIB - 1, b"z")  # the last block
    s2 = snapshot(vm, "s2")

    extents, pages = changed_areas(vm, s2, disk.key, id1, 4 * MIB)
    assert pages == [(0, 4 * MIB)]
    assert extents == blocks((0, 1), (3, 3), (10, 2), (63, 1))

    # Nothing changed between a snapshot and its own changeId.
    assert changed_areas(vm, s1, disk.key, id1, 4 * MIB)[0] == []
    # A changeId outlives its snapshot: backups remove theirs and keep the id.
    removal = s1.RemoveSnapshot_Task(removeChildren=False)
    wait_by_collector(si, removal)
    assert changed_areas(vm, s2, disk.key, id1, 4 * MIB)[0] == extents


def wait_by_collector(si: vim.ServiceInstance, task: vim.Task) -> None:
    """RemoveSnapshot's task info names a snapshot as entity, which pyvmomi rejects."""
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.Task, pathSet=["info.state"])],
    )
    # Polled against a deadline: a hundred quick polls were over before a loaded machine
    # had run the task.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (content,) = pc.RetrieveContents([spec])
        if content.propSet[0].val in ("success", "error"):
            assert content.propSet[0].val == "success"
            return
        time.sleep(0.02)
    raise AssertionError("task did not finish")


def test_star_lists_the_non_zero_blocks(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    disk = grow_disk(vm, 2 * MIB)
    path = flat_file(vm, disk)
    set_cbt(vm, True)
    write(path, BLOCK + 7, b"x")  # block 1
    write(path, 2 * BLOCK, b"y" * BLOCK)  # block 2, adjacent: merged
    write(path, 6 * BLOCK, bytes(BLOCK))  # zeros written: not allocated data
    write(path, 9 * BLOCK, b"w")  # block 9
    snap = snapshot(vm, "s1")
    extents, _ = changed_areas(vm, snap, disk.key, "*", 2 * MIB)
    assert extents == blocks((1, 2), (9, 1))


def test_without_a_snapshot_the_current_disk_is_compared(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    disk = grow_disk(vm, 2 * MIB)
    path = flat_file(vm, disk)
    set_cbt(vm, True)
    s1 = snapshot(vm, "s1")
    write(path, 7 * BLOCK, b"now")
    id1 = disk_of(s1.config).backing.changeId
    assert changed_areas(vm, None, disk.key, id1, 2 * MIB)[0] == blocks((7, 1))
    assert changed_areas(vm, s1, disk.key, id1, 2 * MIB)[0] == []


def test_answers_are_paged_by_window(make_vcsim: type[Simulator]) -> None:
    sim = make_vcsim(args=["-cbt-window", str(MIB)])
    si = connect(sim)
    try:
        vm = find_vm(si)
        size = 3 * MIB + MIB // 2  # the last page is a short one
        disk = grow_disk(vm, size)
        path = flat_file(vm, disk)
        set_cbt(vm, True)
        s1 = snapshot(vm, "s1")
        id1 = disk_of(s1.config).backing.changeId
        write(path, MIB - 10, b"q" * 20)  # blocks 15 and 16, across the first page boundary
        write(path, 3 * MIB + BLOCK, b"r")  # block 49, in the last page
        s2 = snapshot(vm, "s2")

        extents, pages = changed_areas(vm, s2, disk.key, id1, size)
        assert pages == [(0, MIB), (MIB, MIB), (2 * MIB, MIB), (3 * MIB, MIB // 2)]
        # An extent never crosses a page: block 15 ends the first answer, 16 starts the second.
        assert extents == blocks((15, 1), (16, 1), (49, 1))

        star, _ = changed_areas(vm, s2, disk.key, "*", size)
        assert star == extents
        # An answer may start anywhere; it covers one window from there.
        info = vm.QueryChangedDiskAreas(
            snapshot=s2, deviceKey=disk.key, startOffset=MIB - BLOCK + 512, changeId=id1
        )
        assert (info.startOffset, info.length) == (MIB - BLOCK + 512, MIB)
        got = [(a.start, a.length) for a in info.changedArea]
        assert got == [(MIB - BLOCK + 512, 2 * BLOCK - 512)]  # clipped at the start, merged
        with pytest.raises(vmodl.fault.InvalidArgument):
            vm.QueryChangedDiskAreas(
                snapshot=s2, deviceKey=disk.key, startOffset=size, changeId="*"
            )
    finally:
        Disconnect(si)


def test_what_cbt_cannot_answer_is_a_file_fault(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    key = disk_of(vm.config).key
    set_cbt(vm, True)
    s1 = snapshot(vm, "s1")
    id1 = disk_of(s1.config).backing.changeId
    uuid, seq = CHANGE_ID.match(id1).groups()
    unknown = [
        f"{uuid}/{int(seq) + 5}",
        "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1",
        "",
        "garbage",
    ]
    for change_id in unknown:
        with pytest.raises(vim.fault.FileFault) as err:
            vm.QueryChangedDiskAreas(snapshot=s1, deviceKey=key, startOffset=0, changeId=change_id)
        assert err.value.file == disk_of(vm.config).backing.fileName

    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snapshot=s1, deviceKey=key + 1, startOffset=0, changeId="*")

    set_cbt(vm, False)
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=s1, deviceKey=key, startOffset=0, changeId="*")


def test_cbt_off_and_on_gives_a_new_uuid(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    key = disk_of(vm.config).key
    set_cbt(vm, True)
    s1 = snapshot(vm, "s1")
    id1 = disk_of(s1.config).backing.changeId

    set_cbt(vm, False)
    assert not disk_of(vm.config).backing.changeId
    s2 = snapshot(vm, "s2")
    assert not disk_of(s2.config).backing.changeId  # no tracking, no changeId

    set_cbt(vm, True)
    s3 = snapshot(vm, "s3")
    id3 = disk_of(s3.config).backing.changeId
    assert CHANGE_ID.match(id3).group(1) != CHANGE_ID.match(id1).group(1)
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=s3, deviceKey=key, startOffset=0, changeId=id1)
    info = vm.QueryChangedDiskAreas(snapshot=s3, deviceKey=key, startOffset=0, changeId=id3)
    assert info.changedArea == []


def test_snapshot_config_is_a_copy_without_cbt_too(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    snap = snapshot(vm, "s1")
    grow_disk(vm, 2 * MIB)
    assert capacity(disk_of(snap.config)) == 1 * MIB
    assert not disk_of(snap.config).backing.changeId


def test_other_calls_pass_through(vcsim_fresh: Simulator, si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    run(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="kept")))
    assert vm.config.annotation == "kept"
    assert vm.config.changeTrackingEnabled is not True
    run(vm.PowerOffVM_Task())
    assert vm.runtime.powerState == "poweredOff"

    # A VM created later advertises CBT support too.
    folder = vm.parent
    spec = vim.vm.ConfigSpec(
        name="fresh", guestId="otherGuest", files=vim.vm.FileInfo(vmPathName="[LocalDS_0]")
    )
    new = run(folder.CreateVM_Task(spec, vm.resourcePool, vm.runtime.host))
    assert new.capability.changeTrackingSupported is True

    # The simulator still guards the session for the method it does not have.
    stub = SoapStubAdapter(url=vcsim_fresh.url, version=si._stub.version)
    anonymous = vim.VirtualMachine(vm._moId, stub)
    with pytest.raises(vim.fault.NotAuthenticated):
        anonymous.QueryChangedDiskAreas(
            snapshot=None, deviceKey=disk_of(vm.config).key, startOffset=0, changeId="*"
        )


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["-cbt-block", "1000"], "-cbt-block"), (["-cbt-window", "4096"], "-cbt-window")],
)
def test_bad_cbt_flags_are_refused(vcsim_binary: Path, flags: list[str], named: str) -> None:
    cmd = [str(vcsim_binary), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert named in proc.stderr
    assert proc.stdout == ""


def test_a_clone_leaves_the_source_disk_alone(si: vim.ServiceInstance) -> None:
    vm = find_vm(si)
    set_cbt(vm, True)
    snapshot(vm, "s1")
    source = disk_of(vm.config).backing
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec())
    clone = run(vm.CloneVM_Task(folder=vm.parent, name="copy", spec=spec))

    # 0.24.2 handed the source's devices to the clone and renamed their files.
    after = disk_of(vm.config).backing
    assert (after.fileName, after.changeId) == (source.fileName, source.changeId)
    assert disk_of(clone.config).backing.fileName == "[LocalDS_0] copy/copy.vmdk"
    assert not disk_of(clone.config).backing.changeId  # no history for the clone
    assert clone.capability.changeTrackingSupported is True
