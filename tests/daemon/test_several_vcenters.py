"""One daemon protecting two vCenters (two simulators with their own instance uuids):
policies per vCenter and across both, every VM in scope backed up through its own
vCenter, identities distinct though the VM names are equal, and a vCenter that is down
holding back none of the others."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protector.cli.status import render
from protector.config import load_config
from protector.daemon.daemon import Daemon
from protector.daemon.status_html import render_html
from repository import Repository

from .helpers import wait_for

pytestmark = pytest.mark.slow

EAST_UUID = "11111111-1111-4111-8111-111111111111"
WEST_UUID = "22222222-2222-4222-8222-222222222222"
# One VM per pool and per standalone host: DC0_H0_VM0 and DC0_C0_RP0_VM0 on each.
SMALL = ["-vm", "1", "-host", "1"]


def vcenter_table(name: str, url: str, env: str) -> str:
    return f'[vcenters.{name}]\nurl = "{url}"\nuser = "user"\npassword_env = "{env}"\n'


def write_config(root: Path, vcenters: dict[str, str], policies: str) -> Path:
    (root / "policies.d").mkdir(parents=True, exist_ok=True)
    (root / "policies.d" / "main.toml").write_text(policies)
    tables = ""
    for name, url in vcenters.items():
        env = f"VIGIL_TEST_PW_{name.upper()}"
        os.environ[env] = "pass"
        tables += vcenter_table(name, url, env)
    cfg = root / "vigil.toml"
    cfg.write_text(
        tables
        + """
[repository]
path = "repo"
[policies]
path = "policies.d"
[transport]
modes = ["http"]
[daemon]
status_listen = "127.0.0.1:0"
tag_interval = 1
retry_backoff = 0.5
"""
    )
    Repository.init(root / "repo")
    return cfg


def policy(name: str, select: str, *, priority: int, vcenters: str = "") -> str:
    only = f"vcenters = {vcenters}\n" if vcenters else ""
    return f"""
[[policy]]
name = "{name}"
priority = {priority}
{only}[policy.select]
{select}
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 3
"""


@contextlib.asynccontextmanager
async def running(cfg_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(cfg_path))
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_for(lambda: daemon.ready.is_set() or task.done(), 60, "the daemon to sync")
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)


def points(daemon: Daemon) -> list[Any]:
    assert daemon.repo is not None
    return daemon.repo.manifests()


async def test_two_vcenters_one_daemon(tmp_path, make_vcsim):
    east = make_vcsim(args=[*SMALL, "-instance-uuid", EAST_UUID])
    west = make_vcsim(args=[*SMALL, "-instance-uuid", WEST_UUID])
    policies = (
        policy("east-hosts", 'names = ["DC0_H0_*"]', priority=10, vcenters='["east"]')
        + policy("west-all", 'folders = ["/**"]', priority=10, vcenters='["west"]')
        # no `vcenters`: both; on west, west-all's higher priority wins its VM
        + policy("pools", 'names = ["DC0_C0_*"]', priority=5)
    )
    cfg = write_config(tmp_path, {"east": east.url, "west": west.url}, policies)
    async with running(cfg) as daemon:
        await wait_for(lambda: len(points(daemon)) >= 4, 90, "a point of every VM")
        status = daemon.status_data()
        by_path = {v["path"]: v for v in status["vms"]}
        assert set(by_path) == {
            "east:/DC0/vm/DC0_H0_VM0",
            "east:/DC0/vm/DC0_C0_RP0_VM0",
            "west:/DC0/vm/DC0_H0_VM0",
            "west:/DC0/vm/DC0_C0_RP0_VM0",
        }
        assert by_path["east:/DC0/vm/DC0_H0_VM0"]["policy"] == "east-hosts"
        assert by_path["east:/DC0/vm/DC0_C0_RP0_VM0"]["policy"] == "pools"
        assert by_path["west:/DC0/vm/DC0_H0_VM0"]["policy"] == "west-all"
        assert by_path["west:/DC0/vm/DC0_C0_RP0_VM0"]["policy"] == "west-all"
        assert [(v["name"], v["url"], v["connected"]) for v in status["vcenters"]] == [
            ("east", east.url, True),
            ("west", west.url, True),
        ]
        assert daemon.healthy()
        # The same names on both, four identities: each VM's points under its own vCenter.
        ps = points(daemon)
        assert len({p.vm.key for p in ps}) == 4
        assert {(p.vm.vcenter_uuid, p.vm.name) for p in ps} == {
            (EAST_UUID, "DC0_H0_VM0"),
            (EAST_UUID, "DC0_C0_RP0_VM0"),
            (WEST_UUID, "DC0_H0_VM0"),
            (WEST_UUID, "DC0_C0_RP0_VM0"),
        }
        # The metrics' vm label names the vCenter too.
        assert daemon.status is not None
        text = await _metrics(daemon.status.port)
        assert 'vm="west:/DC0/vm/DC0_H0_VM0"' in text


async def test_a_vcenter_that_is_down_holds_back_none_of_the_others(tmp_path, make_vcsim):
    up = make_vcsim(args=[*SMALL, "-instance-uuid", EAST_UUID])
    down = make_vcsim(args=[*SMALL, "-instance-uuid", WEST_UUID])
    down_url = down.url
    down.stop()  # its port is closed: connection refused, as a vCenter that is down
    policies = policy("all", 'folders = ["/**"]', priority=10)
    cfg = write_config(tmp_path, {"up": up.url, "down": down_url}, policies)
    async with running(cfg) as daemon:
        await wait_for(lambda: len(points(daemon)) >= 2, 90, "the live vCenter's VMs backed up")
        assert {p.vm.vcenter_uuid for p in points(daemon)} == {EAST_UUID}
        status = daemon.status_data()
        down_row = next(v for v in status["vcenters"] if v["name"] == "down")
        assert not down_row["connected"] and not down_row["synced"]
        assert not status["healthy"]  # `vigil status` exits 1: a vCenter is cut off
        assert not daemon.in_sync()  # so prune waits rather than orphan the down one's VMs
        text = render(status)
        assert f"vCenter up ({up.url}): live, 2 VMs" in text
        assert f"vCenter down ({down_url}): NOT CONNECTED, inventory not read yet" in text
        assert f"down ({down_url}): <b>NOT CONNECTED</b>" in render_html(status)


async def _metrics(port: int) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return await resp.text()


async def test_a_vcenter_going_down_mid_run_stalls_none_of_the_others(tmp_path, make_vcsim):
    from .helpers import create_vm, session_for

    east = make_vcsim(args=[*SMALL, "-instance-uuid", EAST_UUID])
    west = make_vcsim(args=[*SMALL, "-instance-uuid", WEST_UUID])
    cfg = write_config(
        tmp_path,
        {"east": east.url, "west": west.url},
        policy("all", 'folders = ["/**"]', priority=1),
    )
    async with running(cfg) as daemon:
        await wait_for(lambda: len(points(daemon)) >= 4, 90, "a point of every VM")
        west.stop()
        await wait_for(
            lambda: (
                not next(v for v in daemon.status_data()["vcenters"] if v["name"] == "west")[
                    "connected"
                ]
            ),
            60,
            "west seen as down",
        )
        s = await session_for(east)
        try:
            await create_vm(s, "/DC0/vm", "newcomer")
        finally:
            await s.close()
        await wait_for(
            lambda: any(p.vm.name == "newcomer" for p in points(daemon)),
            60,
            "east's new VM backed up while west is down",
        )
        assert not daemon.healthy()
