"""Shared by the daemon tests: a config for a simulator, a daemon in-process, VM creation."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protector.config import Config, load_config
from protector.devtools.simtools import create_folder, create_vm, find, move_vm
from protector.vsphere.snapshots import SNAPSHOT_NAME, walk_snapshots
from repository import Repository
from watcher.session import Credentials, Session
from watcher.soap import Endpoint

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
    Repository.init(root / "repo")  # as `vigil init --encryption none`
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


__all__ = ["create_folder", "create_vm", "find", "move_vm"]


async def our_snapshots(session: Any, vm: Any) -> list[Any]:
    """Every snapshot on `vm` named like vigil's, whoever owns it (what the tests check is
    gone after a backup, a crash or a restart)."""
    props = await session.properties(vm, ["snapshot"])
    info = props.get("snapshot")
    if info is None:
        return []
    return [n.snapshot for n in walk_snapshots(info.rootSnapshotList) if n.name == SNAPSHOT_NAME]
