"""Workers on a real PostgreSQL: several processes take backup jobs from procrastinate;
one job per VM, per-host slots cluster-wide, kill -9 requeue, retries, the epoch fence,
graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import pytest
from cluster_helpers import (
    defer,
    job_status,
    max_overlap,
    nodes,
    rows,
    set_epoch,
    start_worker,
    wait_for,
)
from procs import create_test_tables, open_gate

from cluster import db
from cluster.nodes import running_jobs
from cluster.queue import BackupJob, make_app, prepare_database

pytestmark = pytest.mark.timeout(180)


def job(vm: str, host: str = "host-1", epoch: int = 1, **payload: object) -> BackupJob:
    return BackupJob("vc-1", vm, host, ("ds-1",), epoch, payload)


async def _setup(url: str, epoch: int = 1) -> None:
    await prepare_database(url)
    create_test_tables(url)
    set_epoch(url, "vc-1", epoch)


async def _running(url: str) -> list[tuple[int, str]]:
    async with await db.connect(url, "test") as conn:
        return [(r.job_id, r.node) for r in await running_jobs(conn)]


def _succeeded(url: str, n: int):
    return lambda: sum(s == "succeeded" for s, _ in job_status(url).values()) >= n


async def test_two_workers_share_jobs_and_per_host_limit_holds_cluster_wide(pg_url, tmp_path):
    await _setup(url := pg_url)
    # 8 VMs on one host, 2 host slots, 2 workers × 3 concurrency = capacity 6 > limit 2.
    with nodes(tmp_path) as start:
        for name in ("w1", "w2"):
            start_worker(start, url, name, concurrency=3, host_slots=2)
        await wait_for(
            lambda: len(rows(url, "SELECT node FROM vigil_cluster_nodes")) == 2,
            60,
            "both workers to be up",
        )
        # Every job waits at a gate: the first two hold both host slots until it opens, so
        # the limit is reached on any machine (not only if a 1 s job outlasts the hand-out
        # of the next), and a third start while they hold them would show as 3 below.
        await defer(url, *[job(f"vm-{i}", seconds=0.2, gate="go") for i in range(8)])
        await wait_for(
            lambda: len(rows(url, "SELECT 1 FROM test_events WHERE kind = 'start'")) >= 2,
            60,
            "two backups to hold the host's slots",
        )
        await asyncio.sleep(2.0)  # room for a wrong third start; max_overlap below would see it
        open_gate(url, "go")
        await wait_for(_succeeded(url, 8), 90, "8 backups to succeed")
    assert max_overlap(url, "host") == {"host-1": 2}
    points = rows(url, "SELECT vm, count(*) FROM test_points GROUP BY vm")
    assert sorted(points) == [(f"vm-{i}", 1) for i in range(8)]
    workers = {r[0] for r in rows(url, "SELECT DISTINCT node FROM test_events")}
    assert workers == {"w1", "w2"}


async def test_one_job_per_vm_at_a_time(pg_url, tmp_path):
    await _setup(url := pg_url)
    first, second, third = await defer(
        url, job("vm-a", seconds=0, gate="a1"), job("vm-a"), job("vm-a")
    )
    assert first is not None
    # One may wait per VM: the second defer is turned away while the first is waiting.
    assert second is None and third is None
    with nodes(tmp_path) as start:
        start_worker(start, url, "w1", concurrency=2)
        start_worker(start, url, "w2", concurrency=2)
        await wait_for(
            lambda: rows(url, "SELECT 1 FROM test_events WHERE kind='start'"),
            60,
            "the first backup of vm-a to start",
        )
        # Running: one more may wait, and it must not start before the first ends,
        # although two idle workers could take it.
        queued, refused = await defer(url, job("vm-a", seconds=0.2), job("vm-a"))
        assert queued is not None and refused is None
        await asyncio.sleep(2.0)  # room for a wrong start; max_overlap below would see it
        open_gate(url, "a1")
        await wait_for(_succeeded(url, 2), 60, "both backups of vm-a")
    assert max_overlap(url, "vm") == {"vm-a": 1}


async def test_killed_worker_job_is_requeued_and_done_by_the_other(pg_url, tmp_path):
    await _setup(url := pg_url)
    with nodes(tmp_path) as start:
        victim = start_worker(start, url, "victim", concurrency=1, host_slots=1)
        (job_id,) = await defer(url, job("vm-k", seconds=0, gate="k"))
        await wait_for(
            lambda: rows(url, "SELECT 1 FROM test_events WHERE node='victim' AND kind='start'"),
            60,
            "the victim to start the backup",
        )
        assert await _running(url) == [(job_id, "victim")]
        rescuer = start_worker(start, url, "rescuer", concurrency=1, host_slots=1)
        victim.kill9()
        open_gate(url, "k")  # the victim can never finish it now
        await wait_for(_succeeded(url, 1), 60, "the stalled job to be requeued and done")
        assert rescuer.proc.poll() is None
        assert await _running(url) == []  # a dead worker's job is never shown as running
    ends = rows(url, "SELECT node, attempt FROM test_events WHERE kind='end'")
    # host_slots=1: the rescuer could only run it because the dead worker's slot was freed.
    assert ends == [("rescuer", 1)]
    assert job_status(url)[job_id] == ("succeeded", 2)
    assert rows(url, "SELECT vm, node FROM test_points") == [("vm-k", "rescuer")]


async def test_failed_backup_is_retried_with_backoff(pg_url, tmp_path):
    await _setup(url := pg_url)
    (job_id,) = await defer(url, job("vm-r", seconds=0.1, fail_attempts=2))
    with nodes(tmp_path) as start:
        start_worker(start, url, "w1")
        await wait_for(_succeeded(url, 1), 60, "the backup to succeed on its third attempt")
    attempts = rows(url, "SELECT attempt, kind, at FROM test_events ORDER BY id")
    assert [(a, k) for a, k, _ in attempts] == [
        (0, "start"),
        (0, "fail"),
        (1, "start"),
        (1, "fail"),
        (2, "start"),
        (2, "end"),
    ]
    # Backoff: wait 0 + 1 ** (attempts + 1) = 1 s before each retry.
    gaps = [(attempts[i + 1][2] - attempts[i][2]).total_seconds() for i in (1, 3)]
    assert all(g >= 0.9 for g in gaps), gaps
    assert job_status(url)[job_id][0] == "succeeded"


async def test_job_of_a_deposed_scheduler_is_refused(pg_url, tmp_path):
    await _setup(url := pg_url, epoch=7)
    stale_start, stale_commit, current = await defer(
        url,
        job("vm-old", epoch=6),  # deferred by the leader of epoch 6: never starts
        job("vm-mid", epoch=7, seconds=0, gate="mid"),  # current at start, not at commit
        job("vm-new", epoch=7, seconds=0.1),
    )
    with nodes(tmp_path) as start:
        start_worker(start, url, "w1", concurrency=3)
        await wait_for(
            lambda: (
                rows(url, "SELECT 1 FROM test_events WHERE vm='vm-mid' AND kind='start'")
                and job_status(url)[current][0] == "succeeded"
            ),
            60,
            "vm-mid to start and vm-new to succeed",
        )
        set_epoch(url, "vc-1", 8)  # a takeover while vm-mid runs
        open_gate(url, "mid")
        await wait_for(
            lambda: (
                {job_status(url)[i][0] for i in (stale_start, stale_commit, current)}
                <= {"failed", "succeeded"}
            ),
            60,
            "all three jobs to end",
        )
    status = job_status(url)
    assert status[stale_start] == ("failed", 1)  # not retried: final
    assert status[stale_commit] == ("failed", 1)
    assert status[current][0] == "succeeded"
    assert rows(url, "SELECT vm FROM test_points") == [("vm-new",)]
    assert not rows(url, "SELECT 1 FROM test_events WHERE vm='vm-old'")


async def test_sigterm_waits_for_running_backup(pg_url, tmp_path):
    await _setup(url := pg_url)
    (job_id,) = await defer(url, job("vm-t", seconds=0, gate="t"))
    with nodes(tmp_path) as start:
        w = start_worker(start, url, "w1", shutdown_timeout=30)
        await wait_for(
            lambda: rows(url, "SELECT 1 FROM test_events WHERE kind='start'"),
            60,
            "the backup to start",
        )
        w.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        assert w.proc.poll() is None  # still waiting for the running backup
        open_gate(url, "t")
        assert w.stop(60) == 0
    assert "WORKER STOPPED" in w.text()
    assert job_status(url)[job_id][0] == "succeeded"
    assert rows(url, "SELECT kind FROM test_events ORDER BY id") == [("start",), ("end",)]


async def test_sigterm_past_the_timeout_aborts_and_the_job_is_retried(pg_url, tmp_path):
    await _setup(url := pg_url)
    (job_id,) = await defer(url, job("vm-long", seconds=30.0))
    with nodes(tmp_path) as start:
        w = start_worker(start, url, "w1", shutdown_timeout=1)
        await wait_for(
            lambda: rows(url, "SELECT 1 FROM test_events WHERE kind='start'"),
            60,
            "the backup to start",
        )
        assert w.stop(30) == 0
    status, attempts = job_status(url)[job_id]
    assert (status, attempts) == ("todo", 1)  # aborted at shutdown, waiting for a worker
    assert not rows(url, "SELECT 1 FROM test_points")


async def test_vm_mutex_holds_even_if_a_running_job_is_wrongly_requeued(pg_url, tmp_path):
    """procrastinate's `lock` relies on the job's status; if a live worker's job is put
    back to `todo` (a heartbeat late past stalled_after_s), the VM's advisory-lock mutex,
    held by the session that runs the backup, still keeps the two runs apart."""
    await _setup(url := pg_url)
    (job_id,) = await defer(url, job("vm-x", seconds=0, gate="x"))
    with nodes(tmp_path) as start:
        start_worker(start, url, "w1", concurrency=2)
        start_worker(start, url, "w2", concurrency=2)
        await wait_for(
            lambda: rows(url, "SELECT 1 FROM test_events WHERE kind='start'"),
            60,
            "the first run to start",
        )
        app = make_app(url)
        async with app.open_async():
            (running,) = await app.job_manager.list_jobs_async(id=job_id)
            await app.job_manager.retry_job(running)
        await wait_for(lambda: job_status(url)[job_id][0] == "doing", 60, "a second fetch")
        await asyncio.sleep(2.0)  # room for a wrong second start
        assert len(rows(url, "SELECT 1 FROM test_events WHERE kind='start'")) == 1
        open_gate(url, "x")
        await wait_for(
            lambda: len(rows(url, "SELECT 1 FROM test_events WHERE kind='end'")) == 2,
            60,
            "both runs to end, one after the other",
        )
    assert max_overlap(url, "vm") == {"vm-x": 1}
