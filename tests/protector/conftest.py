"""A backup rig for the end-to-end tests: a simulator of the test's own, a SOAP session,
a repository in tmp_path and the Context the workflows take, plus the vSphere chores the
tests need (CBT on/off, growing a disk, snapshots, writing a disk over datastore HTTP)."""

from __future__ import annotations

import contextlib
import http.client
import tomllib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import anyio
import pytest
from pyVmomi import vim

from protector.backup import BackupOptions, BackupResult, backup_vm
from protector.config import Config, parse_config
from protector.context import Context
from protector.devtools.simulator import Simulator
from protector.vsphere.snapshots import walk_snapshots
from repository import Repository
from watcher.session import Credentials, Session
from watcher.soap import Endpoint
from watcher.tasks import wait_for_task

MIB = 1024 * 1024
VM_NAME = "DC0_H0_VM0"
PASSWORD_ENV = "VIGIL_TEST_VCENTER_PASSWORD"


def datastore_dir(sim: Simulator, name: str = "LocalDS_0") -> Path:
    """The local directory behind a datastore (`govcsim-<DC>-<name>-<random>`)."""
    dirs = [d for d in sim.datastore_dirs if f"-{name}-" in d.name]
    assert len(dirs) == 1, (name, sim.datastore_dirs)
    return dirs[0]


def config_toml(sim: Simulator, modes: Iterable[str] = ("http",), io_threads: int = 4) -> str:
    ds = datastore_dir(sim)
    mode_list = ", ".join(f'"{m}"' for m in modes)
    return (
        f'[vcenter]\nurl = "{sim.url}"\nuser = "{sim.user}"\npassword_env = "{PASSWORD_ENV}"\n'
        '[repository]\npath = "repo"\n'
        '[policies]\npath = "policies"\n'
        f"[transport]\nmodes = [{mode_list}]\n"
        f'[transport.file.datastores]\nLocalDS_0 = "{ds}"\n'
        f"[limits]\nio_threads = {io_threads}\n"
    )


@dataclass
class Rig:
    sim: Simulator
    cfg: Config
    session: Session
    repo: Repository
    ctx: Context
    tmp: Path

    # -- inventory --------------------------------------------------------------------------

    async def vm(self, name: str = VM_NAME) -> Any:
        idx = self.session.content.searchIndex
        ref = await self.session.call(idx, "FindByInventoryPath", inventoryPath=f"DC0/vm/{name}")
        assert ref is not None, name
        return self.session.client.bind(ref)

    async def disks(self, vm: Any) -> list[Any]:
        config = (await self.session.properties(vm, ["config"]))["config"]
        return [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]

    async def disk(self, vm: Any) -> Any:
        return (await self.disks(vm))[0]

    def flat(self, disk: Any) -> Path:
        """The local `-flat.vmdk` holding a disk's bytes."""
        rel = disk.backing.fileName.split("] ", 1)[1]
        return datastore_dir(self.sim) / rel.replace(".vmdk", "-flat.vmdk", 1)

    async def read_flat(self, vm: Any, size: int | None = None) -> bytes:
        disk = await self.disk(vm)
        cap = size or disk.capacityInKB * 1024
        data = self.flat(disk).read_bytes()
        return data + bytes(cap - len(data))  # bytes past the end of the file are zeros

    async def snapshots(self, vm: Any) -> list[str]:
        info = (await self.session.properties(vm, ["snapshot"])).get("snapshot")
        return [n.name for n in walk_snapshots(info.rootSnapshotList if info else None)]

    # -- chores -----------------------------------------------------------------------------

    async def run(self, obj: Any, method: str, **kw: Any) -> Any:
        task = await self.session.call(obj, method, **kw)
        return await wait_for_task(self.session, task, description=method)

    async def set_cbt(self, vm: Any, on: bool) -> None:
        await self.run(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(changeTrackingEnabled=on))

    async def grow(self, vm: Any, size: int) -> None:
        disk = await self.disk(vm)
        disk.capacityInKB = size // 1024
        change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
        await self.run(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(deviceChange=[change]))
        assert (await self.disk(vm)).capacityInKB * 1024 == size

    async def snapshot(self, vm: Any, name: str) -> Any:
        ref = await self.run(
            vm, "CreateSnapshot_Task", name=name, description="", memory=False, quiesce=False
        )
        return self.session.client.bind(ref)

    async def power(self, vm: Any, on: bool) -> None:
        state = (await self.session.properties(vm, ["runtime.powerState"]))["runtime.powerState"]
        if (state == "poweredOn") != on:
            await self.run(vm, "PowerOnVM_Task" if on else "PowerOffVM_Task")

    async def put_flat(self, vm: Any, data: bytes) -> None:
        """Write a disk's whole `-flat.vmdk` with one datastore HTTP PUT (session cookie)."""
        disk = await self.disk(vm)
        ds, rel = disk.backing.fileName[1:].split("] ", 1)
        path = rel.replace(".vmdk", "-flat.vmdk", 1)
        query = urlencode({"dcPath": "DC0", "dsName": ds})
        url = f"/folder/{quote(path)}?{query}"
        u = urlsplit(self.sim.url)
        cookie = self.session.session_cookie

        def put() -> None:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            try:
                conn.request(
                    "PUT", url, body=data, headers={"Cookie": f"vmware_soap_session={cookie}"}
                )
                resp = conn.getresponse()
                resp.read()
                assert resp.status in (200, 201, 204), resp.status
            finally:
                conn.close()

        await anyio.to_thread.run_sync(put)

    async def prepare(self, size: int, data: bytes, name: str = VM_NAME) -> Any:
        """The VM with its disk grown to `size` and holding `data` (written over HTTP)."""
        vm = await self.vm(name)
        await self.grow(vm, size)
        await self.put_flat(vm, data)
        return vm

    async def backup(self, vm: Any, **kw: Any) -> BackupResult:
        progress = kw.pop("progress", None)
        opts = BackupOptions(quiesce=False, **kw)
        return await backup_vm(self.ctx, vm, opts, path=f"/DC0/vm/{VM_NAME}", progress=progress)


@contextlib.asynccontextmanager
async def open_rig(sim: Simulator, tmp_path: Path) -> AsyncIterator[Rig]:
    toml = tmp_path / "vigil.toml"
    toml.write_text(config_toml(sim))
    (tmp_path / "policies").mkdir()
    cfg = parse_config(tomllib.loads(toml.read_text()), str(toml))
    repo = Repository.init(cfg.repository.path)
    session = Session(Endpoint(sim.url), Credentials(sim.user, sim.password))
    await session.connect()
    try:
        yield Rig(sim, cfg, session, repo, Context.create(cfg, session, repo, None), tmp_path)
    finally:
        await session.close()


@pytest.fixture
async def rig(
    vcsim_fresh: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    monkeypatch.setenv(PASSWORD_ENV, vcsim_fresh.password)  # for `vigil` subprocesses
    async with open_rig(vcsim_fresh, tmp_path) as r:
        yield r


@pytest.fixture
async def vapp_rig(make_vcsim: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    """A rig on a model with one vApp (DC0_C0_APP0 holding two VMs)."""
    async with open_rig(make_vcsim(args=["-app", "1"]), tmp_path) as r:
        yield r


@pytest.fixture
async def quiesce_rig(
    make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose simulator cannot quiesce DC0_H0_VM0: its quiesced snapshots fail with
    ApplicationQuiesceFault (vcsim `-quiesce-fault`); the other VMs quiesce as usual."""
    sim = make_vcsim(args=["-quiesce-fault", VM_NAME])
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r


@pytest.fixture
async def vss_fail_rig(
    make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose simulator models a VSS error in DC0_H0_VM0: its quiesced snapshots
    succeed, but a Windows guest gets no VSS manifest (vcsim `-vss-fail`); DC0_H0_VM1 has
    no VMware Tools running, so its quiesce requests are ignored (`-no-tools`)."""
    sim = make_vcsim(args=["-vss-fail", VM_NAME, "-no-tools", "DC0_H0_VM1"])
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r


@pytest.fixture
async def upkeep_rig(
    make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose simulator leaves runtime.consolidationNeeded set after every snapshot
    removal (vcsim `-consolidation-needed`), and whose ConsolidateVMDisks_Task fails with
    FileLocked on DC0_H0_VM1 (`-consolidate-fault`), and where enabling CBT on a VM with
    snapshots silently does nothing (`-cbt-refuse-with-snapshots`)."""
    sim = make_vcsim(
        args=[
            "-consolidation-needed", "*",
            "-consolidate-fault", "DC0_H0_VM1",
            "-cbt-refuse-with-snapshots", "*",
        ]
    )  # fmt: skip
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r


@pytest.fixture
async def rdm_rig(
    make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose simulator lists a physical-mode RDM (key 2099, scsi0:1) in every snapshot
    of DC0_H0_VM0 (vcsim `-snapshot-rdm`), as ESXi does for a VM with a pass-through LUN."""
    sim = make_vcsim(args=["-snapshot-rdm", VM_NAME])
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r


@pytest.fixture
async def slow_create_rig(make_vcsim: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    """A rig whose CreateVM_Task stays "running" for 1.5 s (vcsim `-task-delay`), as a real
    one does for a while: time to be cancelled in."""
    async with open_rig(make_vcsim(args=["-task-delay", "CreateVM_Task=1500"]), tmp_path) as r:
        yield r


@pytest.fixture
async def file_rig(
    vcsim_fresh: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose transports are ("file", "http"): the file transport writes in place, which a
    changed-only restore needs (datastore HTTP can only rewrite a whole disk)."""
    monkeypatch.setenv(PASSWORD_ENV, vcsim_fresh.password)
    toml = tmp_path / "vigil.toml"
    toml.write_text(config_toml(vcsim_fresh, modes=("file", "http")))
    (tmp_path / "policies").mkdir()
    cfg = parse_config(tomllib.loads(toml.read_text()), str(toml))
    repo = Repository.init(cfg.repository.path)
    session = Session(
        Endpoint(vcsim_fresh.url), Credentials(vcsim_fresh.user, vcsim_fresh.password)
    )
    await session.connect()
    try:
        yield Rig(
            vcsim_fresh, cfg, session, repo, Context.create(cfg, session, repo, None), tmp_path
        )
    finally:
        await session.close()


@pytest.fixture(scope="session")
def fake_vddk(fake_distrib: Path) -> Path:
    """The session's fake VDDK distribution (tests/conftest.py)."""
    return fake_distrib


@pytest.fixture
async def vddk_rig(
    vcsim_fresh: Simulator, fake_vddk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose only transport is VDDK, the fake VixDiskLib reading the simulator's
    datastore directory ($FAKEVDDK_ROOT/LocalDS_0 links to it); the fake counts open
    handles (FakeVixDiskLib_OpenHandles)."""
    monkeypatch.setenv(PASSWORD_ENV, vcsim_fresh.password)  # for `vigil` subprocesses
    root = tmp_path / "fakevddk"
    root.mkdir()
    (root / "LocalDS_0").symlink_to(datastore_dir(vcsim_fresh))
    monkeypatch.setenv("FAKEVDDK_ROOT", str(root))
    for var in ("FAKEVDDK_FAIL_OPEN", "FAKEVDDK_FAIL_READ_SECTOR", "FAKEVDDK_SLOW_READ_US"):
        monkeypatch.delenv(var, raising=False)
    toml = tmp_path / "vigil.toml"
    text = config_toml(vcsim_fresh, modes=("vddk",))
    text = text.replace("[transport]\n", f'[transport]\nvddk_libdir = "{fake_vddk}"\n')
    toml.write_text(text)
    (tmp_path / "policies").mkdir()
    cfg = parse_config(tomllib.loads(toml.read_text()), str(toml))
    repo = Repository.init(cfg.repository.path)
    session = Session(
        Endpoint(vcsim_fresh.url), Credentials(vcsim_fresh.user, vcsim_fresh.password)
    )
    await session.connect()
    try:
        yield Rig(
            vcsim_fresh, cfg, session, repo, Context.create(cfg, session, repo, None), tmp_path
        )
    finally:
        await session.close()


@pytest.fixture
async def tools_rig(
    make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose DC0_H0_VM0 reports VMware Tools running (vcsim `-tools-running`)."""
    sim = make_vcsim(args=["-tools-running", "DC0_H0_VM0"])
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r


@pytest.fixture
async def slow_snapshot_rig(
    make_vcsim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A rig whose snapshot tasks stay running for seconds, as on a busy vCenter."""
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=3000,RemoveSnapshot_Task=1500"])
    monkeypatch.setenv(PASSWORD_ENV, sim.password)
    async with open_rig(sim, tmp_path) as r:
        yield r
