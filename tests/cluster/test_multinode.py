"""Several real `vigil watch --role ...` processes on one simulator, one PostgreSQL and one
repository directory (issue 16): the work spreads over the workers within cluster-wide
limits, a killed scheduler or worker is taken over, and nothing is backed up twice."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos.helpers import export_bytes, run_vigil, verify_ok, wait_until
from daemon.helpers import our_snapshots, session_for
from multinode import (
    DB_ENV,
    MIB,
    Node,
    create_vm_with_data,
    make_node,
    max_overlap,
    points,
    write_policy,
)

from protector.devtools.simtools import create_folder, move_vm
from repository import Repository


@pytest.fixture
def cluster_env(pg_url: str, tmp_path: Path) -> Iterator[list[Node]]:
    """The database URL in the nodes' environment; every node started is stopped."""
    os.environ[DB_ENV] = pg_url
    started: list[Node] = []
    yield started
    for n in started:
        n.stop(timeout=30)


def start(started: list[Node], *nodes: Node) -> None:
    for n in nodes:
        started.append(n.start())


async def wait_leader(nodes: list[Node], timeout: float) -> Node:
    found = await wait_until(
        lambda: next((n for n in nodes if n.alive() and n.leading()), None),
        timeout,
        "a scheduler to lead",
        every=0.2,
    )
    assert isinstance(found, Node)
    return found


def diagnostics(nodes: list[Node]) -> str:
    return "\n".join(f"--- {n.name} ({n.role}) ---\n{n.tail()}" for n in nodes)


async def test_two_workers_share_the_work_within_cluster_wide_limits(
    tmp_path, make_vcsim, cluster_env
):
    # Each snapshot takes 2 s (as a real one takes seconds): every job then holds its slots
    # for over 2 s, so with eight jobs queued the second datastore slot is taken while the
    # first is held on any machine, and `max_overlap == 2` below does not depend on how
    # fast a loaded machine hands out the next job.
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=2000"])
    s = await session_for(sim)
    await create_folder(s, "/DC0/vm", "prod")
    await create_folder(s, "/DC0/vm", "staging")
    write_policy(tmp_path)
    names = [f"app-{i}" for i in range(8)]
    vms = []
    for i, name in enumerate(names):
        vm, _ = await create_vm_with_data(s, sim, "/DC0/vm/staging", name, 48 * MIB, 24 * MIB, i)
        vms.append(vm)
    # Two workers that could run 4 backups at once; the cluster allows 2 per datastore
    # (every VM is on LocalDS_0) and 2 per host.
    limits = "host_slots = 2\ndatastore_slots = 2"
    sched = make_node(tmp_path, sim, "sched-1", "scheduler", cluster=limits)
    w1 = make_node(tmp_path, sim, "worker-1", "worker", cluster=limits)
    w2 = make_node(tmp_path, sim, "worker-2", "worker", cluster=limits)
    nodes = [sched, w1, w2]
    start(cluster_env, *nodes)
    try:
        await wait_leader([sched], 60)
        for vm in vms:
            await move_vm(s, vm, "/DC0/vm/prod")
        await wait_until(lambda: len(points(tmp_path / "repo")) == 8, 180, "8 VMs backed up", 1)
        # Let the scheduler see the jobs end; nothing more may follow within the RPO. It
        # drops a job from "running" before it has read the VM's new point back from the
        # repository: wait for the eight VMs to show "ok" as well.
        await wait_until(
            lambda: (
                (st := sched.status())
                and not st["cluster"]["running_jobs"]
                and not st["cluster"]["queued_jobs"]
                and not st["jobs"]["running"]
                and not st["jobs"]["queued"]
                and st["counts"].get("ok") == 8
            ),
            60,
            "the queue to drain",
            1,
        )
        await asyncio.sleep(3)
    except AssertionError:
        raise AssertionError(diagnostics(nodes)) from None
    by_vm = points(tmp_path / "repo")
    assert sorted(by_vm) == names
    assert all(len(p) == 1 for p in by_vm.values()), {k: len(v) for k, v in by_vm.items()}

    ran = {
        n.name: [e for e in n.events("job.finished") if e["outcome"] == "success"] for n in (w1, w2)
    }
    assert all(ran.values()), f"both workers run jobs: {ran}"
    assert sum(len(v) for v in ran.values()) == 8

    # Each point's read (snapshot to last byte) lies inside its job's slots: at no moment
    # did more than datastore_slots backups read from LocalDS_0, and the limit was reached.
    intervals = [(m.started_at.timestamp(), m.finished_at.timestamp()) for [m] in by_vm.values()]
    assert max_overlap(intervals) == 2, intervals

    # `vigil status` against the scheduler shows the cluster.
    out = run_vigil(sched.cfg, "status")
    assert out.returncode == 0, out.stdout + out.stderr
    for word in ("sched-1", "worker-1", "worker-2", "leader of vCenter"):
        assert word in out.stdout, out.stdout
    # So do a worker's `vigil status` and status page (the VMs are the leader's to show).
    out = run_vigil(w1.cfg, "status")
    assert out.returncode == 0 and "leader of vCenter" in out.stdout, out.stdout + out.stderr
    page = w1.page()
    assert "Cluster (this node: worker-1, worker)" in page and "sched-1" in page, page
    # /metrics: the leader's VM states, the workers' jobs.
    assert sched.metric("vigil_vms", state="ok") == 8
    done = [w.metric("vigil_jobs_total", outcome="success") for w in (w1, w2)]
    assert sum(done) == 8 and all(done), done
    # ... and every node's /metrics has the whole cluster, read from PostgreSQL.
    st = sched.status()
    assert st is not None
    [lead] = st["cluster"]["leaders"]
    for n in (sched, w1, w2):
        assert n.metric("vigil_cluster_leader_holding", vcenter=lead["vcenter"], node="sched-1")
        assert n.metric("vigil_cluster_node_up", node="worker-2", role="worker") == 1
        assert n.metric("vigil_cluster_jobs", queue="backups", status="succeeded") == 8
        assert n.metric("vigil_database_up") == 1
    # SIGTERM: each node stops cleanly (exit 0), and says so.
    for n in nodes:
        assert n.stop(timeout=60) == 0, n.tail()
        assert n.events("cluster.node_stopped"), n.tail()
    await s.close()


async def test_standby_scheduler_takes_over_after_kill9_and_nothing_is_backed_up_twice(
    tmp_path, vcsim_fresh, cluster_env
):
    sim = vcsim_fresh
    s = await session_for(sim)
    await create_folder(s, "/DC0/vm", "prod")
    await create_folder(s, "/DC0/vm", "staging")
    write_policy(tmp_path, rpo="1h")
    first = []
    for i in range(4):
        vm, _ = await create_vm_with_data(s, sim, "/DC0/vm/staging", f"a-{i}", 16 * MIB, 4 * MIB, i)
        first.append(vm)
    late, _ = await create_vm_with_data(s, sim, "/DC0/vm/staging", "late", 16 * MIB, 4 * MIB, 9)
    s1 = make_node(tmp_path, sim, "sched-1", "scheduler")
    s2 = make_node(tmp_path, sim, "sched-2", "scheduler")
    w1 = make_node(tmp_path, sim, "worker-1", "worker")
    w2 = make_node(tmp_path, sim, "worker-2", "worker")
    nodes = [s1, s2, w1, w2]
    start(cluster_env, *nodes)
    try:
        leader = await wait_leader([s1, s2], 60)
        standby = s2 if leader is s1 else s1
        for vm in first:
            await move_vm(s, vm, "/DC0/vm/prod")
        # Kill the leader while its first jobs are queued or running.
        await wait_until(lambda: len(points(tmp_path / "repo")) >= 1, 60, "a first point", 0.2)
        leader.kill9()
        killed_at = time.monotonic()
        await move_vm(s, late, "/DC0/vm/prod")
        # Issue 16's goal is a takeover within 15 s, measured by bench/bench_cluster.py;
        # here a bound a loaded CI machine keeps, which still fails a takeover that never
        # comes or waits for a TCP timeout.
        await wait_leader([standby], 60)
        took_over = time.monotonic() - killed_at
        assert took_over < 45, took_over
        await wait_until(lambda: "late" in points(tmp_path / "repo"), 30, "late protected", 0.5)
        protected = time.monotonic() - killed_at - took_over
        await wait_until(lambda: len(points(tmp_path / "repo")) == 5, 60, "all 5 backed up", 1)
        await wait_until(
            lambda: (
                (st := standby.status())
                and not st["cluster"]["running_jobs"]
                and not st["cluster"]["queued_jobs"]
            ),
            60,
            "the queue to drain",
            1,
        )
        await asyncio.sleep(3)
    except AssertionError:
        raise AssertionError(diagnostics(nodes)) from None
    by_vm = points(tmp_path / "repo")
    assert {k: len(v) for k, v in by_vm.items()} == {f"a-{i}": 1 for i in range(4)} | {"late": 1}
    st = standby.status()
    assert st is not None
    [lead] = st["cluster"]["leaders"]
    assert lead["node"] == standby.name and lead["epoch"] >= 2, lead
    print(f"takeover {took_over:.1f} s, late VM protected {protected:.1f} s after that")
    await s.close()


async def test_killed_worker_job_is_finished_by_another_worker_snapshot_removed(
    tmp_path, vcsim_fresh, cluster_env
):
    sim = vcsim_fresh
    s = await session_for(sim)
    await create_folder(s, "/DC0/vm", "prod")
    await create_folder(s, "/DC0/vm", "staging")
    write_policy(tmp_path)
    size = 256 * MIB
    vm, disk = await create_vm_with_data(s, sim, "/DC0/vm/staging", "big", size, 224 * MIB, 7)
    sched = make_node(tmp_path, sim, "sched-1", "scheduler")
    w1 = make_node(tmp_path, sim, "worker-1", "worker", concurrency=1)
    w2 = make_node(tmp_path, sim, "worker-2", "worker", concurrency=1)
    nodes = [sched, w1, w2]
    start(cluster_env, *nodes)
    try:
        await wait_leader([sched], 60)
        await move_vm(s, vm, "/DC0/vm/prod")
        victim = await wait_until(
            lambda: next((w for w in (w1, w2) if w.running_here()), None), 60, "a worker", 0.1
        )
        assert isinstance(victim, Node)
        # Mid-read: the snapshot is there.
        await wait_snapshot(s, vm, 30)
        victim.kill9()
        assert not points(tmp_path / "repo"), "killed before its point"
        assert await our_snapshots(s, vm), "the killed job left its snapshot"
        other = w2 if victim is w1 else w1
        await wait_until(lambda: "big" in points(tmp_path / "repo"), 120, "the retry's point", 1)
        await wait_until(lambda: not other.running_here(), 30, "the retry to end", 0.5)
    except AssertionError:
        raise AssertionError(diagnostics(nodes)) from None
    [m] = points(tmp_path / "repo")["big"]
    finished = [e for e in other.events("job.finished") if e["vm"] == "big"]
    assert [e["outcome"] for e in finished] == ["success"], finished
    assert await our_snapshots(s, vm) == [], "the retry removed the leftover snapshot"
    assert m.config_info["backup"]["leftover_snapshots_removed"], m.config_info["backup"]
    repo = Repository.open(tmp_path / "repo")
    assert export_bytes(repo, m.point_id, tmp_path / "big.img") == disk
    verify_ok(sched.cfg)
    await s.close()


async def wait_snapshot(session: Any, vm: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await our_snapshots(session, vm):
        assert time.monotonic() < deadline, "the backup never took its snapshot"
        await asyncio.sleep(0.2)


async def test_all_in_one_node_rides_out_a_database_restart(tmp_path, vcsim_fresh, pg_private):
    """`--role all` (scheduler and worker in one process) while PostgreSQL restarts under a
    running backup: the node stays up, leads again with a new epoch, the interrupted VM
    and one moved into scope after the restart are each backed up exactly once."""
    sim = vcsim_fresh
    os.environ[DB_ENV] = pg_private.new_database("restart")
    s = await session_for(sim)
    await create_folder(s, "/DC0/vm", "prod")
    await create_folder(s, "/DC0/vm", "staging")
    write_policy(tmp_path)
    big, _ = await create_vm_with_data(s, sim, "/DC0/vm/staging", "big", 128 * MIB, 96 * MIB, 1)
    late, _ = await create_vm_with_data(s, sim, "/DC0/vm/staging", "late", 16 * MIB, 4 * MIB, 2)
    node = make_node(tmp_path, sim, "node-1", "all").start()
    try:
        await wait_leader([node], 60)
        await move_vm(s, big, "/DC0/vm/prod")
        await wait_until(lambda: node.running_here(), 60, "the backup to run", 0.1)
        pg_private.restart()
        await move_vm(s, late, "/DC0/vm/prod")
        await wait_until(
            lambda: {"big", "late"} <= set(points(tmp_path / "repo")), 120, "both points", 1
        )
        await wait_until(lambda: not node.running_here(), 60, "the jobs to end", 0.5)
        await asyncio.sleep(3)
        assert node.alive(), "the node rode out the restart"
        st = node.status()
        assert st is not None
        [lead] = st["cluster"]["leaders"]
        assert lead["node"] == "node-1" and lead["epoch"] >= 2, lead
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics([node])}") from None
    finally:
        node.stop(timeout=30)
    by_vm = points(tmp_path / "repo")
    assert {k: len(v) for k, v in by_vm.items()} == {"big": 1, "late": 1}
    await s.close()
