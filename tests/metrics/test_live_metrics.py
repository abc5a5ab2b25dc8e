"""The per-VM metrics on a live /metrics of a daemon protecting simulator VMs: their values,
`promtool check metrics` on the scrape, no stale series when a VM leaves its policy, and
every metric the shipped alert rules use is one the daemon serves."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protector.daemon.daemon import Daemon
from tests.daemon.helpers import (
    create_folder,
    create_vm,
    load,
    move_vm,
    policy,
    session_for,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

CONTRIB = Path(__file__).parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "vigil-alerts.yml"
DASHBOARD = CONTRIB / "grafana" / "vigil-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is in Debian's prometheus package (make apt)"
)


@contextlib.asynccontextmanager
async def running(cfg_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load(cfg_path))
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_for(lambda: daemon.ready.is_set() or task.done(), 30, "the daemon to sync")
        if task.done():
            task.result()
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)


async def scrape(daemon: Daemon) -> str:
    assert daemon.status is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon.status.port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of every sample called `name`."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def vm_series(text: str, name: str, vm: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {k: v for k, v in samples(text, name).items() if ("vm", vm) in k}


def vm_state(daemon: Daemon, name: str) -> dict[str, Any]:
    return next(v for v in daemon.status_data()["vms"] if v["name"] == name)


@needs_promtool
async def test_live_metrics_per_vm_pass_promtool_and_drop_stale_series(tmp_path, vcsim_fresh):
    sim = vcsim_fresh
    s = await session_for(sim)
    await create_folder(s, "/DC0/vm", "prod")
    vm = await create_vm(s, "/DC0/vm/prod", "web-1")
    cfg = write_config(tmp_path, sim, policy("prod", 'folders = ["/DC0/vm/prod/**"]', rpo="6h"))
    async with running(cfg) as daemon:
        assert daemon.repo is not None
        await wait_for(
            lambda: vm_state(daemon, "web-1")["state"] == "ok", 30, "web-1's first backup"
        )
        (point,) = [m for m in daemon.repo.manifests() if m.vm.name == "web-1"]
        text = await scrape(daemon)

        web = "/DC0/vm/prod/web-1"
        labels = (("policy", "prod"), ("vm", web))
        last = vm_series(text, "vigil_vm_last_success_timestamp_seconds", web)
        assert last == {labels: pytest.approx(point.committed_at.timestamp(), abs=0.01)}
        assert vm_series(text, "vigil_vm_rpo_seconds", web) == {labels: 6 * 3600}
        # One state series per VM: its current state, valued 1.
        states = vm_series(text, "vigil_vm_state", web)
        assert states == {(labels[0], ("state", "ok"), labels[1]): 1}
        assert samples(text, "vigil_vcenter_connected") == {(): 1}

        # A simulator VM outside the policy: a state, but no RPO and no last success.
        other = "/DC0/vm/DC0_H0_VM0"
        assert (
            vm_series(text, "vigil_vm_state", other)[
                (("policy", ""), ("state", "unprotected"), ("vm", other))
            ]
            == 1
        )
        assert not vm_series(text, "vigil_vm_rpo_seconds", other)
        assert not vm_series(text, "vigil_vm_last_success_timestamp_seconds", other)

        proc = await asyncio.create_subprocess_exec(
            PROMTOOL, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
        )
        out, _ = await proc.communicate(text.encode())
        assert proc.returncode == 0, out.decode()

        # Every vigil_* metric the alert rules and the dashboard use is served (a rename
        # breaks this test, not silently the alerts).
        served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        for shipped in (RULES, DASHBOARD):
            used = set(re.findall(r"\bvigil_[a-z_]+\b", shipped.read_text()))
            assert used and used <= served, (
                f"{shipped.name} uses metrics not served: {used - served}"
            )

        # web-1 leaves the policy's folder: its series move to the new labels, none stay.
        await move_vm(s, vm, "/DC0/vm")
        await wait_for(
            lambda: vm_state(daemon, "web-1")["state"] == "unprotected", 30, "web-1 out of scope"
        )
        text = await scrape(daemon)
        assert not vm_series(text, "vigil_vm_state", web), "stale series of the old path"
        assert not vm_series(text, "vigil_vm_rpo_seconds", "/DC0/vm/web-1")
        # The point is still there; the VM is just not protected any more.
        assert vm_series(text, "vigil_vm_last_success_timestamp_seconds", "/DC0/vm/web-1")
        assert (
            vm_series(text, "vigil_vm_state", "/DC0/vm/web-1")[
                (("policy", ""), ("state", "unprotected"), ("vm", "/DC0/vm/web-1"))
            ]
            == 1
        )
