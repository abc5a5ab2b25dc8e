"""The daemon when things go wrong: failing backups, crashes, outages, busy repositories."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from protector.daemon.daemon import Daemon
from protector.daemon.planner import Planner
from protector.daemon.pruner import Pruner

from .helpers import load, policy, wait_for, write_config
from .test_daemon import _metrics, points_of, running, vm_state

pytestmark = pytest.mark.slow


async def test_a_vm_that_keeps_failing_cools_down_and_shows_failing_and_breached(
    tmp_path, vcsim_fresh
):
    # The file transport with no datastore mounted: every backup of the VM fails.
    cfg = write_config(
        tmp_path,
        vcsim_fresh,
        policy("one", 'names = ["DC0_H0_VM0"]'),
        modes='["file"]',
        daemon="retry_attempts = 2",
    )
    async with running(cfg) as daemon:
        await wait_for(
            lambda: "DC0_H0_VM0" in {r.vm_name for r in daemon.runner.failures.values()},
            30,
            "the last retry to fail",
        )
        # Cooled down for 0.5 s * 2 (two failed attempts), one more round, then 0.5 s * 8.
        await wait_for(lambda: len(recs_of(daemon)) >= 4, 10, "the round after the cooldown")
        await asyncio.sleep(2.5)  # a storm would show many more jobs by now
        recs = recs_of(daemon)
        assert len(recs) == 4, [(r.reason, r.outcome) for r in recs]
        assert "retry 2/2" in recs[1].reason and "retry 2/2" in recs[3].reason
        st = vm_state(daemon, "DC0_H0_VM0")
        assert st["state"] == "failing"
        assert st["last_error"]
        assert st["breached"] is True, "no point at all: the RPO is not met"
        assert st["consecutive_failures"] == 4
        assert st["retry_at"] and st["next_run"] and st["next_run"] >= st["retry_at"][:19]
        data = daemon.status_data()
        assert data["breached"] == 1
        assert "vigil_rpo_breaches 1.0" in _metrics(daemon)


def recs_of(daemon, name: str = "DC0_H0_VM0") -> list:
    return [r for r in daemon.runner.history if r.vm_name == name]


class CrashingPlanner(Planner):
    async def run(self, ready: asyncio.Event, stopping: asyncio.Event) -> None:
        await ready.wait()
        raise RuntimeError("scheduler bug")


class CrashingScheduler(Daemon):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.planner.__class__ = CrashingPlanner  # the scheduler part, crashing once ready


async def test_a_crashed_internal_task_stops_the_daemon_with_exit_1(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim, policy("none", 'names = ["nothing-matches"]'))
    with capture_logs() as logs:
        rc = await asyncio.wait_for(CrashingScheduler(load(cfg)).run(install_signals=False), 60)
    assert rc == 1, "systemd must see the daemon failed (Restart=on-failure)"
    crash = next(e for e in logs if e["event"] == "daemon.task_crashed")
    assert crash["task"] == "scheduler" and "scheduler bug" in crash["error"]


class FailingPruner(Pruner):
    async def prune_now(self, *, dry_run: bool = False) -> Any:
        raise OSError(28, "No space left on device")


class FailingPrune(Daemon):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.pruner.__class__ = FailingPruner


async def test_a_failed_daily_prune_is_logged_and_counted_and_the_pruner_goes_on(tmp_path, vcsim):
    daemon = FailingPrune(load(write_config(tmp_path, vcsim, policy("p", 'names = ["x"]'))))
    with capture_logs() as logs:
        await daemon.pruner.scheduled_prune()
        await daemon.pruner.scheduled_prune()
    assert daemon.stats.prune_failures == 2
    assert any("No space left on device" in e for e in daemon.errors)
    assert [e["event"] for e in logs].count("daemon.prune_failed") == 2
    assert daemon.pruner.last_prune is not None and daemon.pruner.last_prune["outcome"] == "failed"


async def test_prune_keeps_conflicted_vms_and_waits_out_a_vcenter_outage(tmp_path, vcsim_fresh):
    sim = vcsim_fresh
    vm = {i: f"DC0_H0_VM{i}" if i < 2 else f"DC0_C0_RP0_VM{i - 2}" for i in range(3)}

    def policies(*parts: str) -> None:
        (tmp_path / "policies.d" / "main.toml").write_text("".join(parts))

    cfg = write_config(
        tmp_path,
        sim,
        policy("a", f'names = ["{vm[0]}"]') + policy("c", f'names = ["{vm[1]}", "{vm[2]}"]'),
    )
    # Orphans keep nothing: any point wrongly taken for an orphan is deleted at once.
    cfg.write_text(cfg.read_text().replace('path = "repo"', 'path = "repo"\norphan_keep_days = 0'))
    async with running(cfg) as daemon:
        await wait_for(lambda: all(points_of(daemon, vm[i]) for i in range(3)), 60, "3 points")
        # vm0: two policies of equal priority; vm1: no policy any more (a real orphan).
        policies(
            policy("a", f'names = ["{vm[0]}"]'),
            policy("b", f'names = ["{vm[0]}"]'),
            policy("c", f'names = ["{vm[2]}"]'),
        )
        await wait_for(lambda: daemon.planner.conflicts, 15, "the conflict")
        result = await daemon.prune_now()
        assert result is not None and not result.sweep_deferred
        assert points_of(daemon, vm[0]), "a conflicted VM keeps every point"
        assert not points_of(daemon, vm[1]), "a real orphan past orphan_keep_days goes"
        assert daemon.status_data()["prune"]["outcome"] == "done"

        # vCenter goes away; vm2 leaves every policy meanwhile. Prune must not decide now.
        policies(policy("a", f'names = ["{vm[0]}"]'), policy("b", f'names = ["{vm[0]}"]'))
        await wait_for(lambda: not vm_state(daemon, vm[2])["policy"], 15, "vm2 out of scope")
        assert sim.proc is not None
        sim.proc.kill()
        await wait_for(lambda: not daemon.healthy(), 30, "the outage")
        assert await daemon.prune_now() is None
        assert points_of(daemon, vm[2]) and points_of(daemon, vm[0])
        pr = daemon.status_data()["prune"]
        assert pr["outcome"] == "deferred" and "not live" in pr["reason"]


async def test_prune_holds_back_new_backups_so_its_sweep_is_not_starved(tmp_path, make_vcsim):
    # Each backup waits 1.5 s for its snapshot: four VMs, one at a time, keep the
    # repository lock (shared) busy; without a pause the sweep's exclusive lock would
    # only come in a gap between two jobs, if ever.
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=1500"])
    cfg = write_config(
        tmp_path,
        sim,
        policy("all", 'folders = ["/DC0/vm/**"]'),
        limits="concurrent_backups = 1",
        daemon="prune_max_pause = 30",
    )
    async with running(cfg) as daemon:
        await wait_for(lambda: daemon.runner.running, 30, "a running backup")
        t0 = time.time()
        result = await daemon.prune_now()
        t1 = time.time()
        assert result is not None and result.sweep_deferred is None
        started_during = [r.vm_name for r in daemon.runner.history if t0 < r.started < t1]
        started_during += [
            r.vm_name for _, r, _ in daemon.runner.running.values() if t0 < r.started < t1
        ]
        assert not started_during, "no backup may start while the prune waits for its sweep"
        pr = daemon.status_data()["prune"]
        assert pr["outcome"] == "done" and pr["sweep_deferred"] is None
        assert daemon.status_data()["dispatch_paused"] is None
        # Dispatch resumed: the rest of the VMs still get their points.
        await wait_for(lambda: daemon.status_data()["counts"].get("ok") == 4, 60, "all four")


async def test_power_off_backs_up_only_when_no_fresh_point(tmp_path, vcsim_fresh):
    from watcher.tasks import wait_for_task

    from .helpers import find, session_for

    extra = "[policy.trigger]\non_power_off = true"
    cfg = write_config(tmp_path, vcsim_fresh, policy("p", 'names = ["DC0_H0_VM0"]', extra=extra))
    s = await session_for(vcsim_fresh)
    try:
        async with running(cfg) as daemon:
            await wait_for(lambda: points_of(daemon, "DC0_H0_VM0"), 30, "the first point")
            await wait_for(lambda: not daemon.runner.busy(vm_key(daemon)), 10, "the job done")
            vm = await find(s, "/DC0/vm/DC0_H0_VM0")
            await wait_for_task(s, await s.call(vm, "PowerOffVM_Task"), description="off")
            await wait_for(
                lambda: vm_state(daemon, "DC0_H0_VM0") and _power(daemon) == "poweredOff",
                10,
                "the power-off event",
            )
            await asyncio.sleep(1.5)
            recs = recs_of(daemon)
            assert len(recs) == 1, [r.reason for r in recs]
    finally:
        await s.close()


def vm_key(daemon, name: str = "DC0_H0_VM0") -> str:
    return vm_state(daemon, name)["identity"]


def _power(daemon, name: str = "DC0_H0_VM0") -> str | None:
    node = daemon.watcher.tree.find_vm_by_identity(vm_key(daemon, name))
    return node.power_state if node else None


async def test_a_vm_held_by_another_process_is_backed_up_once_it_is_free(tmp_path, vcsim_fresh):
    from protector.vmlock import VmLock, lock_path
    from repository import Repository

    from .helpers import find, session_for

    cfg = write_config(tmp_path, vcsim_fresh, policy("p", 'names = ["DC0_H0_VM0"]'))
    s = await session_for(vcsim_fresh)
    try:
        vm = await find(s, "/DC0/vm/DC0_H0_VM0")
        uuid = (await s.properties(vm, ["config.instanceUuid"]))["config.instanceUuid"]
        # E.g. an admin's `vigil restore` of this VM, running while the daemon starts.
        state = Repository.init(tmp_path / "repo").state.ensure()  # locks: local state
        path = lock_path(state, s.vcenter_uuid, uuid)
        other = VmLock(path, "DC0_H0_VM0", "restore")
        other.acquire()
        try:
            async with running(cfg) as daemon:
                # retry_backoff is 0.5 s: asked again and again. Polled, not slept on: a
                # snapshot of the state taken while a retry runs would read "running".
                await wait_for(
                    lambda: (
                        len(busy_recs(daemon)) >= 2
                        and vm_state(daemon, "DC0_H0_VM0")["state"] == "queued"
                    ),
                    20,
                    "a second busy answer, the VM queued for the next try",
                )
                assert not [r for r in recs_of(daemon) if r.outcome == "failed"]
                assert not daemon.runner.failures and not daemon.runner.consecutive_failures
                other.release()
                await wait_for(lambda: points_of(daemon, "DC0_H0_VM0"), 20, "the backup")
        finally:
            other.release()
    finally:
        await s.close()


def busy_recs(daemon) -> list:
    return [r for r in recs_of(daemon) if r.outcome == "busy"]


async def test_a_watcher_reconnect_does_not_break_a_running_backup(tmp_path, make_vcsim):
    """The watcher drops and replaces its session on any update-loop error; a backup in
    flight must not lose its session with it (the jobs have their own)."""
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=2000"])
    cfg = write_config(tmp_path, sim, policy("one", 'names = ["DC0_H0_VM0"]'))
    async with running(cfg) as daemon:
        assert daemon.runner is not None and daemon.vcenters.links[0].watcher is not None
        await wait_for(lambda: daemon.runner.running, 30, "a running backup")
        await asyncio.sleep(0.3)  # the snapshot task is under way
        await daemon.vcenters.links[
            0
        ].watcher._drop_session()  # what the loop does after a transport error
        await wait_for(lambda: daemon.runner.history, 60, "the backup to finish")
        rec = daemon.runner.history[0]
        assert (rec.outcome, rec.attempt) == ("success", 1), rec.error


async def test_jobs_have_a_session_of_their_own_that_a_watcher_reconnect_keeps(
    tmp_path, vcsim_fresh
):
    """Disk reads (datastore HTTP, VDDK) carry the session cookie taken when the disk was
    opened. The watcher logs its session out whenever its update loop fails; were the jobs
    sharing it, every backup reading at that moment would lose its session mid-disk."""
    sim = vcsim_fresh
    cfg = write_config(tmp_path, sim, policy("none", 'names = ["no-such-vm"]'))
    async with running(cfg) as daemon:
        assert daemon.watcher is not None
        jobs = await daemon.session()
        cookie = jobs.session_cookie
        await daemon.vcenters.links[
            0
        ].watcher._drop_session()  # what the loop does after a transport error
        await wait_for(lambda: daemon.watcher.healthy, 20, "the watcher back")
        # A raw call (no transparent re-login) with the cookie the disk reader holds.
        sm = jobs.content.sessionManager
        current = await jobs.client.call(
            jobs.content.propertyCollector,
            "RetrievePropertiesEx",
            specSet=[_spec(sm, "currentSession")],
            options=_opts(),
        )
        assert current is not None and current.objects[0].propSet, "logged out"
        assert jobs.session_cookie == cookie


def _spec(mo: Any, prop: str) -> Any:
    from pyVmomi import vmodl

    pc = vmodl.query.PropertyCollector
    return pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=mo, skip=False)],
        propSet=[pc.PropertySpec(type=type(mo), pathSet=[prop], all=False)],
    )


def _opts() -> Any:
    from pyVmomi import vmodl

    return vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=10)
