"""Finished job rows are pruned after their retention (real PostgreSQL, real workers):
succeeded and cancelled after `job_retention_days`, failed after the longer
`failed_job_retention_days`, maintenance jobs after an hour; unfinished jobs stay
whatever their age."""

from __future__ import annotations

import pytest
from cluster_helpers import defer, nodes, rows, set_epoch, start_worker, wait_for
from procs import create_test_tables

from cluster.queue import BACKUP_TASK, MAINT_QUEUE, BackupJob, make_app, prepare_database
from cluster.retention import Retention, prune_jobs

pytestmark = pytest.mark.timeout(180)


def job(vm: str, epoch: int = 1) -> BackupJob:
    return BackupJob("vc-1", vm, "host-1", ("ds-1",), epoch, {"noop": True})


def age(url: str, job_id: int, interval: str) -> None:
    """Make the job look finished `interval` ago: every event of it moves back in time (the
    retention counts from the last one)."""
    rows(
        url,
        "UPDATE procrastinate_events SET at = now() - %s::interval WHERE job_id = %s RETURNING 1",
        (interval, job_id),
    )


def status(url: str) -> dict[int, str]:
    return dict(rows(url, "SELECT id, status::text FROM procrastinate_jobs"))


async def _setup(url: str) -> None:
    await prepare_database(url)
    create_test_tables(url)
    set_epoch(url, "vc-1", 1)


async def test_finished_jobs_older_than_their_retention_go_and_the_rest_stay(pg_url, tmp_path):
    url = pg_url
    await _setup(url)
    ok_old, ok_new, failed_old, failed_mid = await defer(
        url, job("ok-old"), job("ok-new"), job("failed-old", epoch=0), job("failed-mid", epoch=0)
    )
    app = make_app(url)
    async with app.open_async():
        later = app.tasks[BACKUP_TASK].configure(schedule_in={"hours": 1})
        cancelled_old = await later.defer_async(**job("cancelled").to_args())
        todo_old = await later.defer_async(**job("todo").to_args())
        assert await app.job_manager.cancel_job_by_id_async(cancelled_old)
    with nodes(tmp_path) as start:
        start_worker(start, url, "w1")
        await wait_for(
            lambda: (
                [status(url).get(i) for i in (ok_old, ok_new, failed_old, failed_mid)]
                == ["succeeded", "succeeded", "failed", "failed"]
                and rows(
                    url,
                    "SELECT 1 FROM procrastinate_jobs WHERE queue_name = %s "
                    "AND status = 'succeeded'",
                    (MAINT_QUEUE,),
                )
            ),
            60,
            "the backups to finish and a maintenance job to run",
        )
    # The worker is stopped: nothing moves now. Every job finished long enough ago to go,
    # except those its retention keeps.
    for job_id, interval in [
        (ok_old, "8 days"),  # > 7: goes
        (ok_new, "6 days"),  # kept
        (failed_old, "31 days"),  # > 30: goes
        (failed_mid, "8 days"),  # a failure is kept 30 days
        (cancelled_old, "8 days"),  # like a success
        (todo_old, "40 days"),  # not finished: kept whatever its age
    ]:
        age(url, job_id, interval)
    # Maintenance runs (the requeue task's): finished ones go after an hour; one the
    # stopping worker deferred but never ran stays.
    maintenance = dict(
        rows(
            url,
            "SELECT id, status::text FROM procrastinate_jobs WHERE queue_name = %s",
            (MAINT_QUEUE,),
        )
    )
    for job_id in maintenance:
        age(url, job_id, "2 hours")
    unfinished = {i for i, st in maintenance.items() if st in ("todo", "doing")}
    async with app.open_async():
        deleted = await prune_jobs(app, Retention(), maintenance_queue=MAINT_QUEUE, batch=2)
    left = status(url)
    assert set(left) == {ok_new, failed_mid, todo_old} | unfinished, left
    done = len(maintenance) - len(unfinished)
    assert done and deleted == {"succeeded": 1 + done, "failed": 1, "cancelled": 1}, deleted
    # Their events went with them.
    assert not rows(
        url,
        "SELECT 1 FROM procrastinate_events WHERE job_id = ANY(%s)",
        ([ok_old, failed_old, cancelled_old],),
    )


async def test_a_worker_prunes_on_its_own_schedule(pg_url, tmp_path):
    url = pg_url
    await _setup(url)
    old, new = await defer(url, job("old"), job("new"))
    with nodes(tmp_path) as start:
        # Every second here; every 15 minutes by default (queue.PRUNE_CRON).
        start_worker(start, url, "w1", prune_cron="* * * * * */1")
        await wait_for(
            lambda: [status(url).get(i) for i in (old, new)] == ["succeeded", "succeeded"],
            60,
            "both backups to succeed",
        )
        # A node taken out of service 8 days ago, and one that went quiet an hour ago.
        rows(
            url,
            "INSERT INTO vigil_cluster_nodes (node, role, pid, last_seen) VALUES "
            "('retired', 'worker', 1, now() - interval '8 days'), "
            "('quiet', 'worker', 2, now() - interval '1 hour') RETURNING 1",
        )
        age(url, old, "8 days")
        await wait_for(lambda: old not in status(url), 60, "the worker's prune task")
        assert status(url)[new] == "succeeded"
        await wait_for(
            lambda: not rows(url, "SELECT 1 FROM vigil_cluster_nodes WHERE node = 'retired'"),
            30,
            "the retired node to be forgotten",
        )
        known = {r[0] for r in rows(url, "SELECT node FROM vigil_cluster_nodes")}
        assert known == {"quiet", "w1"}, known
