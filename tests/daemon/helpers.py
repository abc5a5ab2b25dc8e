"""Shared by the daemon tests: a config for a simulator, a daemon in-process, VM creation."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyVmomi import vim

from protector.config import Config, load_config
from watcher.session import Credentials, Session
from watcher.soap import Endpoint
from watcher.tasks import wait_for_task

PASSWORD_ENV = "VIGIL_TEST_VC_PASSWORD"


def write_config(
    root: Path,
    sim: Any,
    policies: str,
    *,
    limits: str = "",
    daemon: str = "",
    modes: str = '["http"]',
) -> Path:
    (root / "policies.d").mkdir(parents=True, exist_ok=True)
    (root / "policies.d" / "main.toml").write_text(policies)
    cfg = root / "vigil.toml"
    cfg.write_text(
        f"""
[vcenter]
url = "{sim.url}"
user = "{sim.user}"
password_env = "{PASSWORD_ENV}"
[repository]
path = "repo"
[policies]
path = "policies.d"
[transport]
modes = {modes}
[limits]
{limits}
[daemon]
status_listen = "127.0.0.1:0"
tag_interval = 1
retry_backoff = 0.5
{daemon}
"""
    )
    os.environ[PASSWORD_ENV] = sim.password
    return cfg


def policy(name: str, select: str, *, priority: int = 10, rpo: str = "24h", extra: str = "") -> str:
    return f"""
[[policy]]
name = "{name}"
priority = {priority}
[policy.select]
{select}
[policy.schedule]
rpo = "{rpo}"
[policy.retention]
keep_last = 3
{extra}
"""


def load(cfg_path: Path) -> Config:
    return load_config(cfg_path)


async def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def session_for(sim: Any) -> Session:
    return await Session(Endpoint(sim.url), Credentials(sim.user, sim.password)).connect()


async def find(session: Session, path: str) -> Any:
    ref = await session.call(
        session.content.searchIndex, "FindByInventoryPath", inventoryPath=path.strip("/")
    )
    assert ref is not None, f"{path} not found"
    return session.client.bind(ref)


async def create_folder(session: Session, parent_path: str, name: str) -> Any:
    parent = await find(session, parent_path)
    ref = await session.call(parent, "CreateFolder", name=name)
    return session.client.bind(ref)


async def create_vm(
    session: Session,
    folder_path: str,
    name: str,
    *,
    pool_path: str = "/DC0/host/DC0_C0/Resources",
    host_path: str | None = None,
    disk_kb: int = 1024,
) -> Any:
    """A VM with one thin disk, created the way an admin would (CreateVM_Task)."""
    folder = await find(session, folder_path)
    pool = await find(session, pool_path)
    host = await find(session, host_path) if host_path else None
    ctrl = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        device=vim.vm.device.ParaVirtualSCSIController(
            key=-100, busNumber=0, sharedBus="noSharing"
        ),
    )
    disk = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        fileOperation="create",
        device=vim.vm.device.VirtualDisk(
            key=-101,
            controllerKey=-100,
            unitNumber=0,
            capacityInKB=disk_kb,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                diskMode="persistent", thinProvisioned=True, fileName=""
            ),
        ),
    )
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId="otherGuest64",
        numCPUs=1,
        memoryMB=128,
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[ctrl, disk],
    )
    task = await session.call(folder, "CreateVM_Task", config=spec, pool=pool, host=host)
    ref = await wait_for_task(session, task, timeout=60)
    return session.client.bind(ref)


async def move_vm(session: Session, vm: Any, folder_path: str) -> None:
    folder = await find(session, folder_path)
    task = await session.call(folder, "MoveIntoFolder_Task", list=[vm])
    await wait_for_task(session, task, timeout=60)
