"""The auto-protector against the simulator: event-triggered and RPO-driven protection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protector.daemon.daemon import Daemon
from protector.devtools.demo import flat_url, put_disk

from .helpers import (
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


def points_of(daemon: Daemon, name: str) -> list[Any]:
    assert daemon.repo is not None
    return [m for m in daemon.repo.manifests() if m.vm.name == name]


def vm_state(daemon: Daemon, name: str) -> dict[str, Any]:
    return next(v for v in daemon.status_data()["vms"] if v["name"] == name)


async def test_vm_created_or_moved_into_protected_folder_is_backed_up_unasked(
    tmp_path, vcsim_fresh
):
    sim = vcsim_fresh
    s = await session_for(sim)
    await create_folder(s, "/DC0/vm", "prod")
    await create_folder(s, "/DC0/vm", "staging")
    cfg = write_config(tmp_path, sim, policy("prod", 'folders = ["/DC0/vm/prod/**"]'))
    async with running(cfg) as daemon:
        # Nothing in scope yet: the simulator's own VMs are not under /prod.
        assert daemon.status_data()["counts"].get("unprotected") == 4
        await create_vm(s, "/DC0/vm/prod", "web-1")
        await wait_for(lambda: points_of(daemon, "web-1"), 20, "web-1's first restore point")
        # The point is committed a moment before the job ends (catalog record, cleanup).
        await wait_for(lambda: vm_state(daemon, "web-1")["state"] == "ok", 10, "job finished")
        assert vm_state(daemon, "web-1")["policy"] == "prod"
        rec = next(r for r in daemon.runner.history if r.vm_name == "web-1")
        assert "came into scope of prod" in rec.reason

        vm = await create_vm(s, "/DC0/vm/staging", "db-1")
        await put_disk(s, await flat_url(s, vm), b"db-1 data\n" * 100_000)  # ~1 MB
        await asyncio.sleep(1.5)
        assert not points_of(daemon, "db-1"), "out of scope: no backup"
        await move_vm(s, vm, "/DC0/vm/prod")
        await wait_for(lambda: points_of(daemon, "db-1"), 20, "db-1 backed up after the move")
        # A point within the RPO: no second backup of web-1 meanwhile.
        assert len(points_of(daemon, "web-1")) == 1
        await wait_for(lambda: vm_state(daemon, "db-1")["state"] == "ok", 10, "db-1's job")
        await assert_every_metric_served(daemon)
    await s.close()


async def assert_every_metric_served(daemon: Daemon) -> None:
    """/metrics over HTTP carries each metric the daemon promises, with live values."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    assert daemon.status is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon.status.port}/metrics") as r,
    ):
        assert r.status == 200
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("vigil_vms", state="ok") == 2 and value("vigil_vms", state="unprotected") == 4
    assert value("vigil_rpo_breaches") == 0
    assert value("vigil_jobs_total", outcome="success") == 2
    assert value("vigil_read_bytes_total") > 0 and value("vigil_stored_bytes_total") > 0
    assert value("vigil_backup_duration_seconds_count") == 2
    assert 0 <= value("vigil_inventory_update_lag_seconds") < 60
    assert value("vigil_policy_reload_errors_total") == 0
    assert value("vigil_policy_errors") == 0


async def test_tag_brings_vm_into_scope_within_poll_interval(tmp_path, vcsim_fresh):
    from watcher.tags import TagClient

    sim = vcsim_fresh
    cfg = write_config(tmp_path, sim, policy("gold", 'tags = ["Backup:Gold"]'))
    async with running(cfg) as daemon:
        assert not any(v["policy"] for v in daemon.status_data()["vms"])
        node = next(v for v in daemon.watcher.tree.vms() if v.name == "DC0_H0_VM0")
        tags = TagClient(daemon.cfg and _endpoint(sim), sim.user, sim.password)
        try:
            cat = await tags.create_category("Backup")
            tag = await tags.create_tag(cat, "Gold")
            await tags.attach(tag, node.moref)
        finally:
            await tags.close()
        await wait_for(lambda: points_of(daemon, "DC0_H0_VM0"), 15, "tagged VM backed up")
        assert vm_state(daemon, "DC0_H0_VM0")["policy"] == "gold"
        assert not points_of(daemon, "DC0_H0_VM1")


def _endpoint(sim: Any) -> Any:
    from watcher.soap import Endpoint

    return Endpoint(sim.url)


async def test_limits_hold_for_twenty_vms_under_two_policies(tmp_path, make_vcsim):
    from tests.protector.test_jobs import max_overlap

    # 2 clusters x 2 hosts, 10 VMs in each cluster's root pool: 20 VMs on 4 hosts.
    sim = make_vcsim(args=["-cluster", "2", "-host", "2", "-vm", "10", "-standalone-host", "0"])
    policies = policy("a", 'names = ["*_C0_*"]') + policy("b", 'names = ["*_C1_*"]', priority=5)
    cfg = write_config(
        tmp_path,
        sim,
        policies,
        limits="concurrent_backups = 3\nper_host = 2\nper_datastore = 9",
    )
    async with running(cfg) as daemon:
        assert sum(1 for v in daemon.status_data()["vms"] if v["policy"]) == 20
        await wait_for(
            lambda: len([r for r in daemon.runner.history if r.outcome == "success"]) >= 20,
            120,
            "20 backups",
        )
        recs = list(daemon.runner.history)
        assert max_overlap(recs, lambda r: ["all"]) <= 3
        assert max_overlap(recs, lambda r: [r.host]) <= 2
        assert {r.policy for r in recs} == {"a", "b"}


async def test_broken_policy_edit_keeps_old_policies_and_shows_error(tmp_path, vcsim_fresh):
    sim = vcsim_fresh
    cfg = write_config(tmp_path, sim, policy("all", 'folders = ["/DC0/vm/**"]'))
    async with running(cfg) as daemon:
        await wait_for(
            lambda: daemon.status_data()["counts"].get("ok") == 4, 30, "all four protected"
        )
        bad = policy("all", 'folders = ["/DC0/vm/**"]\nnmes = ["x"]')
        (tmp_path / "policies.d" / "main.toml").write_text(bad)
        await wait_for(lambda: daemon.status_data()["policy_errors"], 15, "the policy error")
        errs = daemon.status_data()["policy_errors"]
        assert any("select.nmes" in e and "main.toml" in e for e in errs), errs
        # The old policy still protects every VM.
        assert all(v["policy"] == "all" for v in daemon.status_data()["vms"])
        metrics = _metrics(daemon)
        assert "vigil_policy_reload_errors_total 1.0" in metrics
        assert 'vigil_vms{state="ok"} 4.0' in metrics


def _metrics(daemon: Daemon) -> str:
    daemon.refresh_metrics()
    return daemon.metrics.exposition().decode()


async def test_simulator_restart_recovers_without_duplicate_jobs(tmp_path, vcsim_binary):
    import socket

    from protector.devtools.simulator import Simulator

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    listen = ["-l", f"127.0.0.1:{port}"]
    first = Simulator(args=listen, binary=vcsim_binary).start()
    second = None
    try:
        cfg = write_config(tmp_path, first, policy("all", 'folders = ["/DC0/vm/**"]'))
        async with running(cfg) as daemon:
            await wait_for(
                lambda: daemon.status_data()["counts"].get("ok") == 4, 30, "all four protected"
            )
            jobs_before = len(daemon.runner.history)
            assert jobs_before == 4
            assert first.proc is not None
            first.proc.kill()  # vCenter gone without a goodbye
            first.stop()
            await wait_for(lambda: not daemon.healthy(), 30, "/healthz to report the outage")
            assert await healthz(daemon) == 503
            second = Simulator(args=listen, binary=vcsim_binary).start()
            await wait_for(daemon.healthy, 60, "the daemon to reconnect")
            assert await healthz(daemon) == 200
            await asyncio.sleep(3)  # time for any wrongly triggered job to show up
            assert len(daemon.runner.history) == jobs_before, [
                (r.vm_name, r.reason) for r in list(daemon.runner.history)[jobs_before:]
            ]
            assert not daemon.runner.running and not daemon.runner.queued
            assert daemon.status_data()["counts"] == {"ok": 4}
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def healthz(daemon: Daemon) -> int:
    import aiohttp

    assert daemon.status is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{daemon.status.port}/healthz") as r,
    ):
        return r.status
