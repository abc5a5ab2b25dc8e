"""The stalled-job requeue and the new leader's clean-up of old-epoch jobs, driven through
procrastinate's own JobManager against a real PostgreSQL (no worker processes: a worker
that took a job and then went silent is what a kill -9 leaves)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest
from cluster_helpers import job_status

from cluster import db, nodes
from cluster.queue import (
    BACKUP_QUEUE,
    BackupJob,
    defer_backup,
    make_app,
    prepare_database,
    requeue_stalled,
    supersede_stale_jobs,
)

pytestmark = pytest.mark.timeout(60)


def job(vm: str, vcenter: str = "vc-1", epoch: int = 1) -> BackupJob:
    return BackupJob(vcenter, vm, "h", ("ds",), epoch, {})


# A worker is stalled once its heartbeat is older than this. The dead workers below went
# silent an hour ago (their heartbeat is set back in the database, not waited for), so
# the live one's fresh heartbeat is far inside the limit however slow the machine: which
# worker counts as stalled does not depend on how fast the test runs.
STALLED_S = 60.0


async def _take_and_die(app, url: str, n: int = 1) -> tuple[int, list[int]]:
    """Register a worker, fetch `n` jobs with it, then never beat again: its last
    heartbeat an hour ago, as a worker killed then would have left it."""
    jm = app.job_manager
    worker_id = await jm.register_worker()
    taken = []
    for _ in range(n):
        fetched = await jm.fetch_job(queues=[BACKUP_QUEUE], worker_id=worker_id)
        assert fetched is not None
        taken.append(fetched.id)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour' "
            "WHERE id = %s",
            (worker_id,),
        )
    return worker_id, taken


async def test_requeue_only_jobs_of_silent_workers(pg_url):
    await prepare_database(pg_url)
    app = make_app(pg_url)
    async with app.open_async():
        await defer_backup(app, job("vm-dead"))
        _, (dead_job,) = await _take_and_die(app, pg_url)
        live_worker = await app.job_manager.register_worker()
        await defer_backup(app, job("vm-live"))
        live_job = await app.job_manager.fetch_job(queues=[BACKUP_QUEUE], worker_id=live_worker)
        assert live_job is not None
        assert await requeue_stalled(app, STALLED_S) == [dead_job]
    status = job_status(pg_url)
    assert status[dead_job] == ("todo", 1)
    assert status[live_job.id] == ("doing", 0)


async def test_stalled_job_superseded_by_a_waiting_one_is_failed(pg_url):
    await prepare_database(pg_url)
    app = make_app(pg_url)
    async with app.open_async():
        await defer_backup(app, job("vm-a"))
        _, (dead_job,) = await _take_and_die(app, pg_url)
        waiting = await defer_backup(app, job("vm-a"))  # allowed: the first is `doing`
        assert waiting is not None
        assert await requeue_stalled(app, STALLED_S) == []
    status = job_status(pg_url)
    assert status[dead_job][0] == "failed"
    assert status[waiting] == ("todo", 0)


async def test_stalled_job_out_of_attempts_is_failed(pg_url):
    await prepare_database(pg_url)
    app = make_app(pg_url)
    async with app.open_async():
        jid = await defer_backup(app, job("vm-poison"))
        for _ in range(2):  # it killed its worker twice
            await _take_and_die(app, pg_url)
            await requeue_stalled(app, STALLED_S, max_attempts=3)
        assert job_status(pg_url)[jid] == ("todo", 2)
        await _take_and_die(app, pg_url)
        assert await requeue_stalled(app, STALLED_S, max_attempts=3) == []
    assert job_status(pg_url)[jid][0] == "failed"


async def test_new_leader_cancels_waiting_jobs_of_older_epochs(pg_url):
    await prepare_database(pg_url)
    app = make_app(pg_url)
    async with app.open_async():
        old = await defer_backup(app, job("vm-1", epoch=3))
        other_vc = await defer_backup(app, job("vm-2", vcenter="vc-2", epoch=1))
        current = await defer_backup(app, job("vm-3", epoch=4))
        assert await supersede_stale_jobs(app, "vc-1", 4) == [old]
        # vm-1 can be deferred again by the new leader (its queueing lock is free).
        assert await defer_backup(app, job("vm-1", epoch=4)) is not None
    status = job_status(pg_url)
    assert status[old][0] == "cancelled"
    assert status[other_vc][0] == "todo" and status[current][0] == "todo"


async def test_node_heartbeats_list_the_cluster(pg_url):
    stop = asyncio.Event()
    beating = asyncio.create_task(
        nodes.heartbeat_loop(pg_url, "proxy-1", "worker", interval=0.2, stop=stop)
    )
    async with await db.connect(pg_url, "test") as conn:
        await db.apply_schema(conn)
        await nodes.beat(conn, "proxy-2", "scheduler", pid=4242)
        await conn.execute(
            "UPDATE vigil_cluster_nodes SET last_seen = now() - interval '1 minute' "
            "WHERE node = 'proxy-2'"
        )

        async def listed():
            return await nodes.list_nodes(conn)

        rows = await wait_for_async(listed, lambda r: len(r) == 2)
        stop.set()
        await beating
        by_node = {r.node: r for r in rows}
        assert by_node["proxy-1"].role == "worker" and by_node["proxy-1"].is_alive(5.0)
        assert by_node["proxy-2"].pid == 4242 and not by_node["proxy-2"].is_alive(5.0)
        assert await nodes.forget_stale(conn, timedelta(seconds=30)) == 1


async def wait_for_async(probe, ok, timeout: float = 10.0):
    result = None

    async def check():
        nonlocal result
        result = await probe()
        return ok(result)

    for _ in range(int(timeout / 0.1)):
        if await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout} s: {result!r}")
