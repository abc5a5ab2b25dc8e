"""A vApp a policy selects, protected by real `vigil watch --role ...` processes (1
scheduler, 2 workers) on one simulator, one PostgreSQL and one repository: the vApp is
backed up as one set, by one job on one worker, exactly once within its RPO."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from chaos.helpers import datastore_dir, export_bytes, first_disk, wait_until
from daemon.helpers import our_snapshots, session_for
from multinode import DB_ENV, MIB, Node, make_node, points
from pyVmomi import vim

from cluster.fencing import StaleEpochError
from cluster.queue import BackupJob, JobRun, set_key
from protector.config import load_config
from protector.daemon.clustered import ClusterBackup
from protector.daemon.metrics import Metrics
from protector.daemon.sessions import JobSessions
from protector.vappsets import group_of, vapp_sets
from repository import Repository
from watcher.tasks import wait_for_task

pytestmark = pytest.mark.slow

APP = "/DC0/host/DC0_C0/Resources/DC0_C0_APP0"
MEMBERS = ["DC0_C0_APP0_VM0", "DC0_C0_APP0_VM1"]


def write_vapp_policy(root: Path) -> None:
    pol = root / "policies.d"
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "shop.toml").write_text(
        f"""
[[policy]]
name = "shop"
priority = 10
[policy.select]
vapps = ["{APP}"]
[policy.schedule]
rpo = "1h"
[policy.retention]
keep_last = 10
[policy.backup]
quiesce = false
"""
    )


async def test_workers_back_up_a_selected_vapp_as_one_set_once_per_rpo(
    tmp_path, make_vcsim, pg_url
):
    sim = make_vcsim(args=["-app", "1"])
    os.environ[DB_ENV] = pg_url
    write_vapp_policy(tmp_path)
    sched = make_node(tmp_path, sim, "sched-1", "scheduler")
    workers = [make_node(tmp_path, sim, f"worker-{i}", "worker") for i in (1, 2)]
    nodes = [sched, *workers]
    for n in nodes:
        n.start()
    try:
        await wait_until(lambda: sorted(points(tmp_path / "repo")) == MEMBERS, 120, "2 points", 1)
        await wait_until(
            lambda: (
                (st := sched.status())
                and not st["cluster"]["running_jobs"]
                and not st["cluster"]["queued_jobs"]
                and not st["jobs"]["running"]
                and not st["jobs"]["queued"]
                and all(v["state"] == "ok" for v in st["vms"] if v["name"] in MEMBERS)
            ),
            60,
            "the set's job to end and both members to be ok on the scheduler",
            1,
        )
        # The scheduler's next tick would defer again if it found a member due.
        await asyncio.sleep(5)
        manifests = Repository.open(tmp_path / "repo").manifests()
        finished = [e for w in workers for e in w.events("job.finished")]
        deferred = sched.events("job.deferred")
    except AssertionError as exc:
        logs = "\n".join(f"--- {n.name} ---\n{n.tail()}" for n in nodes)
        raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        for n in nodes:
            n.stop(timeout=30)
    # Exactly one point per member, both in one complete set of the vApp.
    assert sorted(m.vm.name for m in manifests) == MEMBERS
    [vset] = vapp_sets(manifests)
    assert vset.complete and vset.group["path"] == APP
    assert {group_of(m)["id"] for m in manifests} == {vset.id}  # type: ignore[index]
    assert all(m.policy == "shop" for m in manifests)
    # One job did it, on one worker: the set's, deferred once by the scheduler.
    assert [e["vm"] for e in deferred] == ["vApp DC0_C0_APP0"], deferred
    assert [(e["vm"], e["outcome"]) for e in finished] == [("vApp DC0_C0_APP0", "success")]


async def fill_members(session: Any, sim: Any, size: int) -> dict[str, tuple[Any, bytes]]:
    """Each member's first disk grown to `size` and filled with random data (a set backup
    that takes long enough to kill its worker in the middle); name → (VM, its bytes)."""
    idx = session.content.searchIndex
    ref = await session.call(idx, "FindByInventoryPath", inventoryPath=APP.strip("/"))
    assert ref is not None, f"no vApp {APP} in the simulator"
    refs = (await session.properties(session.client.bind(ref), ["vm"]))["vm"]
    out: dict[str, tuple[Any, bytes]] = {}
    for i, r in enumerate(refs):
        vm = session.client.bind(r)
        name = (await session.properties(vm, ["name"]))["name"]
        disk = await first_disk(session, vm)
        disk.capacityInKB = size // 1024
        change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
        spec = vim.vm.ConfigSpec(deviceChange=[change])
        await wait_for_task(session, await session.call(vm, "ReconfigVM_Task", spec=spec))
        disk = await first_disk(session, vm)
        rel = disk.backing.fileName.split("] ", 1)[1]
        flat = datastore_dir(sim) / rel.replace(".vmdk", "-flat.vmdk", 1)
        rng = random.Random(i)
        data = b"".join(rng.randbytes(MIB) for _ in range(size // MIB))
        flat.write_bytes(data)
        out[name] = (vm, data)
    assert sorted(out) == MEMBERS
    return out


async def test_a_set_whose_worker_is_killed_is_finished_by_the_other_worker(
    tmp_path, make_vcsim, pg_url
):
    sim = make_vcsim(args=["-app", "1"])
    os.environ[DB_ENV] = pg_url
    write_vapp_policy(tmp_path)
    s = await session_for(sim)
    disks = await fill_members(s, sim, 256 * MIB)
    sched = make_node(tmp_path, sim, "sched-1", "scheduler")
    workers = [make_node(tmp_path, sim, f"worker-{i}", "worker", concurrency=1) for i in (1, 2)]
    nodes = [sched, *workers]
    for n in nodes:
        n.start()
    try:
        victim = await wait_until(
            lambda: next((w for w in workers if w.running_here()), None), 120, "the set job", 0.1
        )
        assert isinstance(victim, Node)
        # Mid-set: the first member's snapshot is there, nothing is committed yet.
        deadline = time.monotonic() + 60
        while not any([await our_snapshots(s, vm) for vm, _ in disks.values()]):
            assert time.monotonic() < deadline, "the set's backup never took a snapshot"
            await asyncio.sleep(0.1)
        victim.kill9()
        assert not points(tmp_path / "repo"), "killed before the first member's point"
        # The scheduler shows both members in their set's job (running until the stalled
        # job is requeued, then queued), neither as due on its own.
        st = sched.status()
        assert st is not None
        states = [v["state"] for v in st["vms"] if v["name"] in MEMBERS]
        assert states in (["running"] * 2, ["queued"] * 2), states
        other = workers[1] if victim is workers[0] else workers[0]
        await wait_until(
            lambda: sorted(points(tmp_path / "repo")) == MEMBERS, 180, "the retry's set", 1
        )
        await wait_until(lambda: not other.running_here(), 60, "the retry to end", 0.5)
        manifests = Repository.open(tmp_path / "repo").manifests()
        finished = [e for e in other.events("job.finished") if e["vm"] == "vApp DC0_C0_APP0"]
    except AssertionError as exc:
        logs = "\n".join(f"--- {n.name} ---\n{n.tail()}" for n in nodes)
        raise AssertionError(f"{exc}\n{logs}") from None
    finally:
        for n in nodes:
            n.stop(timeout=30)
    assert [e["outcome"] for e in finished] == ["success"], finished
    # One point per member, one complete set; the killed attempt's snapshot was removed.
    assert sorted(m.vm.name for m in manifests) == MEMBERS
    [vset] = vapp_sets(manifests)
    assert vset.complete
    removed = [m.config_info["backup"]["leftover_snapshots_removed"] for m in manifests]
    assert any(removed), removed
    for vm, _ in disks.values():
        assert await our_snapshots(s, vm) == []
    repo = Repository.open(tmp_path / "repo")
    for m in manifests:
        assert export_bytes(repo, m.point_id, tmp_path / f"{m.vm.name}.img") == disks[m.vm.name][1]
    await s.close()


class Fence(JobRun):
    """The job's epoch fence, deposed or not: what `check_epoch` answers when a newer
    leader took over (the SQL of it is tested in tests/cluster/test_election.py)."""

    deposed = False

    async def check_epoch(self) -> None:
        if self.deposed:
            raise StaleEpochError(self.job.vcenter, self.job.epoch, self.job.epoch + 1)


async def test_set_job_fenced_by_the_epoch_then_run_then_moot(tmp_path, make_vcsim):
    """ClusterBackup on a set job, on the simulator and a repository: a deposed leader's
    job commits no member and ends as stale (not retried); a current one makes one complete
    set; the same plan again (a second job of the plan the set fulfilled) is moot."""
    sim = make_vcsim(args=["-app", "1"])
    write_vapp_policy(tmp_path)
    cfg = load_config(make_node(tmp_path, sim, "worker-1", "worker").cfg)
    repo = Repository.open(tmp_path / "repo")
    backup = ClusterBackup(cfg, repo, None, Metrics(), JobSessions(cfg))
    s = await session_for(sim)
    idx = s.content.searchIndex
    app = s.client.bind(await s.call(idx, "FindByInventoryPath", inventoryPath=APP.strip("/")))
    refs = (await s.properties(app, ["vm"]))["vm"]
    members = []
    for r in refs:
        props = await s.properties(s.client.bind(r), ["config.instanceUuid"])
        members.append(f"{s.vcenter_uuid}/{props['config.instanceUuid']}")
    payload = {
        "name": "vApp DC0_C0_APP0",
        "policy": "shop",
        "path": APP,
        "known_points": dict.fromkeys(members, ""),
    }
    job = BackupJob(
        s.vcenter_uuid,
        set_key(s.vcenter_uuid, app._moId),
        "",
        (),
        1,
        payload,
        app._moId,
        tuple(sorted(members)),
    )
    try:
        run = Fence(1, 0, "worker-1", None, job)  # type: ignore[arg-type]
        run.deposed = True
        with pytest.raises(StaleEpochError):
            await backup(job, run)
        assert repo.manifests() == []
        assert [r.outcome for r in backup.history] == ["stale"]

        await backup(job, Fence(2, 0, "worker-1", None, job))  # type: ignore[arg-type]
        manifests = repo.manifests()
        [vset] = vapp_sets(manifests)
        assert vset.complete and len(manifests) == 2
        assert backup.history[-1].outcome == "success"
        assert backup.history[-1].point_id == vset.id

        await backup(job, Fence(3, 0, "worker-1", None, job))  # type: ignore[arg-type]
        assert (backup.history[-1].outcome, backup.history[-1].point_id) == (
            "already done",
            vset.id,
        )
        assert len(repo.manifests()) == 2
    finally:
        await backup.sessions.close()
        await s.close()
