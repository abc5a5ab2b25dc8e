"""What starts a backup in `vigil watch`, and what must not: the RPO scheduler, policy edits,
renames, power-off (inside and outside the backup window) and a daemon restart."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from watcher.tasks import wait_for_task

from .helpers import find, policy, session_for, wait_for, write_config
from .test_daemon import points_of, running, vm_state

pytestmark = pytest.mark.slow


def recs_of(daemon, name: str) -> list:
    return [r for r in daemon.runner.history if r.vm_name == name]


async def test_rpo_scheduler_backs_up_again_before_the_rpo_runs_out_but_not_in_a_loop(
    tmp_path, vcsim_fresh
):
    # A 30 s RPO: the next backup must start before the point is 30 s old, and (the 30 min
    # planning margin being far larger than the RPO, it is cut to a quarter: 7.5 s) must not
    # start the moment the last ends. The RPO was 8 s, whose 2 s margin a backup on a loaded
    # machine could outlast and breach: 7.5 s is room for one backup of this small VM.
    rpo = 30
    cfg = write_config(
        tmp_path, vcsim_fresh, policy("fast", 'names = ["DC0_H0_VM0"]', rpo=f"{rpo}s")
    )
    async with running(cfg) as daemon:
        await wait_for(lambda: points_of(daemon, "DC0_H0_VM0"), 30, "the first point")
        first = points_of(daemon, "DC0_H0_VM0")[0]
        await wait_for(
            lambda: [r for r in recs_of(daemon, "DC0_H0_VM0") if r.reason == "RPO due"],
            rpo + 30,
            "a scheduled backup",
        )
        rec = next(r for r in recs_of(daemon, "DC0_H0_VM0") if r.reason == "RPO due")
        age_at_start = rec.started - first.committed_at.timestamp()
        assert 0 < age_at_start < rpo, f"started when the point was {age_at_start:.1f} s old"
        # The scheduled backup's point: committed before the first point was an RPO old.
        await wait_for(lambda: len(points_of(daemon, "DC0_H0_VM0")) >= 2, 60, "a second point")
        second = max(points_of(daemon, "DC0_H0_VM0"), key=lambda m: m.committed_at)
        gap = (second.committed_at - first.committed_at).total_seconds()
        assert gap < rpo, f"the second point came {gap:.1f} s after the first: RPO breached"
        assert vm_state(daemon, "DC0_H0_VM0")["breached"] is False
        # A fresh point: the next backup is due 22.5 s on, so none starts meanwhile (a loop
        # would start one as soon as the last ended).
        before = len(recs_of(daemon, "DC0_H0_VM0"))
        await asyncio.sleep(8)
        extra = len(recs_of(daemon, "DC0_H0_VM0")) - before
        assert extra == 0, f"{extra} backups within 8 s of a fresh point: a backup loop"


async def test_policy_edit_protects_newly_covered_vms_and_counts_those_that_leave(
    tmp_path, vcsim_fresh
):
    cfg = write_config(tmp_path, vcsim_fresh, policy("p", 'names = ["DC0_H0_VM0"]'))
    async with running(cfg) as daemon:
        await wait_for(lambda: points_of(daemon, "DC0_H0_VM0"), 30, "VM0's point")
        with capture_logs() as logs:
            (tmp_path / "policies.d" / "main.toml").write_text(
                policy("p", 'names = ["DC0_H0_VM1"]')
            )
            # The point is committed a moment before the job's record reaches the history.
            await wait_for(
                lambda: points_of(daemon, "DC0_H0_VM1") and recs_of(daemon, "DC0_H0_VM1"),
                30,
                "VM1 backed up and its job recorded",
            )
        rec = recs_of(daemon, "DC0_H0_VM1")[0]
        assert rec.reason == "policy edit: now covered by p"
        left = [e for e in logs if e["event"] == "daemon.vm_left_policies"]
        assert [e["vm"] for e in left] == ["/DC0/vm/DC0_H0_VM0"]
        assert daemon.stats.orphaned == 1
        assert points_of(daemon, "DC0_H0_VM0"), "orphan retention: its point is kept"
        assert vm_state(daemon, "DC0_H0_VM0")["state"] == "unprotected"
        assert len(recs_of(daemon, "DC0_H0_VM0")) == 1


async def test_a_vm_renamed_into_scope_is_backed_up(tmp_path, vcsim_fresh):
    cfg = write_config(tmp_path, vcsim_fresh, policy("db", 'names = ["db-*"]'))
    s = await session_for(vcsim_fresh)
    try:
        async with running(cfg) as daemon:
            vm = await find(s, "/DC0/vm/DC0_H0_VM1")
            task = await s.call(vm, "Rename_Task", newName="db-7")
            await wait_for_task(s, task, description="rename")
            # The point is committed a moment before the job's record reaches the history.
            await wait_for(
                lambda: points_of(daemon, "db-7") and recs_of(daemon, "db-7"),
                20,
                "the renamed VM's point and finished job",
            )
            assert "came into scope of db (renamed)" in recs_of(daemon, "db-7")[0].reason
    finally:
        await s.close()


def closed_window() -> str:
    """A backup window that opens in two hours (local time): closed now."""
    now = datetime.now().astimezone()
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    return f"{start:%H:%M}-{end:%H:%M}"


async def test_power_off_outside_the_window_backs_up_only_where_the_policy_allows_it(
    tmp_path, vcsim_fresh
):
    window = closed_window()

    def pol(name: str, vm: str, outside: bool) -> str:
        extra = f"[policy.trigger]\non_power_off = true\noutside_window = {str(outside).lower()}"
        return policy(name, f'names = ["{vm}"]', extra=extra).replace(
            'rpo = "24h"', f'rpo = "24h"\nwindow = "{window}"'
        )

    cfg = write_config(
        tmp_path,
        vcsim_fresh,
        pol("anytime", "DC0_H0_VM0", True) + pol("in-window", "DC0_H0_VM1", False),
    )
    s = await session_for(vcsim_fresh)
    try:
        async with running(cfg) as daemon:
            # No point yet, but the window is closed: the scheduler waits for it.
            await asyncio.sleep(1)
            assert not daemon.runner.history
            with capture_logs() as logs:
                for name in ("DC0_H0_VM1", "DC0_H0_VM0"):
                    vm = await find(s, f"/DC0/vm/{name}")
                    await wait_for_task(s, await s.call(vm, "PowerOffVM_Task"), description="off")
                # The point is committed a moment before the job's record reaches the history.
                await wait_for(
                    lambda: points_of(daemon, "DC0_H0_VM0") and recs_of(daemon, "DC0_H0_VM0"),
                    20,
                    "VM0 backed up and its job recorded",
                )
                await asyncio.sleep(1)  # time for a wrongly started backup of VM1 to show
            assert recs_of(daemon, "DC0_H0_VM0")[0].reason == "guest powered off"
            assert not recs_of(daemon, "DC0_H0_VM1"), "outside_window = false: wait"
            deferred = [e for e in logs if e["event"] == "daemon.trigger_deferred"]
            assert [e["vm"] for e in deferred] == ["/DC0/vm/DC0_H0_VM1"]
            assert vm_state(daemon, "DC0_H0_VM1")["next_run"] is not None
    finally:
        await s.close()


async def test_a_restarted_daemon_does_not_repeat_backups_within_the_rpo(tmp_path, vcsim_fresh):
    cfg = write_config(tmp_path, vcsim_fresh, policy("all", 'folders = ["/DC0/vm/**"]'))
    async with running(cfg) as daemon:
        await wait_for(lambda: daemon.status_data()["counts"].get("ok") == 4, 30, "4 protected")
    async with running(cfg) as again:
        # The state comes from the repository: every VM is within its RPO.
        assert again.status_data()["counts"] == {"ok": 4}
        await asyncio.sleep(2)
        assert not again.runner.history and not again.runner.queued
        assert again.stats.triggered == again.stats.scheduled == 0


async def test_a_trigger_deferred_by_the_window_runs_when_the_window_opens(tmp_path, vcsim_fresh):
    """A backup wanted now despite a fresh point (a policy change mid-job that backs up
    differently) but held back by a closed window must run when the window opens — not
    a whole RPO later, when the scheduler would otherwise next look at the VM."""
    window = closed_window()
    text = policy(
        "nightly",
        'names = ["DC0_H0_VM1"]',
        extra="[policy.trigger]\noutside_window = false",
    ).replace('rpo = "24h"', f'rpo = "72h"\nwindow = "{window}"')
    cfg = write_config(tmp_path, vcsim_fresh, text)
    async with running(cfg) as daemon:
        from protector.daemon.state import VmState

        node = next(v for v in daemon.watcher.tree.vms() if v.name == "DC0_H0_VM1")
        now = datetime.now().astimezone()
        daemon.state[node.identity] = VmState(newest_good=now)  # a point within the RPO
        daemon.planner.reschedule(node.identity)
        # RPO-driven: the latest window that keeps the 72 h RPO, two days from now.
        assert daemon.planner.due[node.identity] > now + timedelta(hours=40)
        daemon.planner.trigger_if_due(
            node, daemon.planner.policy("nightly"), "test", even_if_fresh=True
        )
        # Deferred: today's window, which opens in two hours.
        due = daemon.planner.due[node.identity]
        assert now + timedelta(minutes=118) <= due <= now + timedelta(hours=3), (due, now)
        assert not daemon.runner.history  # nothing ran outside the window
