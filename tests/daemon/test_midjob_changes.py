"""vCenter and the policies change while a backup runs: the VM is deleted, or moved to
another policy. Snapshot creation is delayed so the change lands mid-backup."""

from __future__ import annotations

import asyncio

import pytest

from watcher.tasks import wait_for_task

from .helpers import create_folder, create_vm, policy, session_for, wait_for, write_config
from .test_daemon import points_of, running, vm_state

pytestmark = pytest.mark.slow


def recs_of(daemon, name: str) -> list:
    return [r for r in daemon.runner.history if r.vm_name == name]


async def test_a_vm_deleted_mid_backup_is_not_retried_nor_shown_failing(tmp_path, make_vcsim):
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=2000"])
    s = await session_for(sim)
    await create_folder(s, "/DC0/vm", "prod")
    # retry_backoff 0.5 s: a wrongly retried job shows up well within the wait below.
    cfg = write_config(tmp_path, sim, policy("prod", 'folders = ["/DC0/vm/prod/**"]'))
    try:
        async with running(cfg) as daemon:
            vm = await create_vm(s, "/DC0/vm/prod", "doomed")
            await wait_for(lambda: daemon.runner.running, 20, "the backup to start")
            await asyncio.sleep(0.3)
            await wait_for_task(s, await s.call(vm, "Destroy_Task"), description="destroy")
            await wait_for(lambda: recs_of(daemon, "doomed"), 30, "the job to end")
            # The watcher reports the deletion on its own time, not with the job's end.
            await wait_for(
                lambda: (
                    daemon.stats.orphaned == 1
                    and "doomed" not in {v["name"] for v in daemon.status_data()["vms"]}
                ),
                30,
                "the watcher to drop the deleted VM",
            )
            await asyncio.sleep(3)  # a wrongly retried job shows up meanwhile
            recs = recs_of(daemon, "doomed")
            assert len(recs) == 1, [(r.reason, r.outcome, r.error) for r in recs]
            assert recs[0].outcome == "gone", (recs[0].outcome, recs[0].error)
            assert "doomed" in recs[0].error and "deleted" in recs[0].error
            assert not daemon.runner.busy(recs[0].vm_key)
            assert not daemon.runner.failures and not daemon.runner.cooldown_until
            assert not daemon.runner.consecutive_failures
            assert daemon.stats.orphaned == 1
            assert not points_of(daemon, "doomed"), "no partial point"
            assert "doomed" not in {v["name"] for v in daemon.status_data()["vms"]}
            assert not [e for e in daemon.errors if "doomed" in e], list(daemon.errors)
    finally:
        await s.close()


async def test_a_vm_moved_to_another_policy_mid_backup_gets_that_policys_backup(
    tmp_path, make_vcsim
):
    # "bronze" takes crash-consistent snapshots, "gold" quiesces the guest: the point taken
    # under bronze's options is not the backup gold asks for.
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=2000"])
    bronze = policy("bronze", 'names = ["DC0_H0_VM0"]', extra="[policy.backup]\nquiesce = false")
    cfg = write_config(tmp_path, sim, bronze)
    async with running(cfg) as daemon:
        await wait_for(lambda: daemon.runner.running, 20, "the bronze backup to start")
        (tmp_path / "policies.d" / "main.toml").write_text(
            policy("gold", 'names = ["DC0_H0_VM0"]', priority=20)
        )
        # As SIGHUP does: the edit lands now, not whenever the file watcher notices it.
        await daemon.reload()
        assert vm_state(daemon, "DC0_H0_VM0")["policy"] == "gold"
        assert daemon.runner.running, "the edit must land while bronze's backup runs"
        await wait_for(lambda: len(points_of(daemon, "DC0_H0_VM0")) >= 2, 30, "gold's backup")
        # The point is committed a moment before its job's record is (cleanup comes between).
        await wait_for(lambda: len(recs_of(daemon, "DC0_H0_VM0")) >= 2, 10, "gold's job record")
        recs = recs_of(daemon, "DC0_H0_VM0")
        assert [r.policy for r in recs[:2]] == ["bronze", "gold"], [
            (r.policy, r.reason) for r in recs
        ]
        assert "now covered by gold" in recs[1].reason
        assert [m.policy for m in points_of(daemon, "DC0_H0_VM0")[:2]] == ["bronze", "gold"]
        await asyncio.sleep(2.5)
        assert len(recs_of(daemon, "DC0_H0_VM0")) == 2, "and then no more: gold is satisfied"
