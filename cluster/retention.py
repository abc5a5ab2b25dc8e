"""Pruning finished job rows: procrastinate keeps every job and its events for ever.

A worker's periodic task (`vigil.prune_jobs`, queue.py) deletes, in batches, the finished
jobs older than their retention: succeeded and cancelled backups after
`cluster.job_retention_days` (7), failed and aborted ones after
`cluster.failed_job_retention_days` (30: a failure is worth looking into later), and any
finished job of the maintenance queue after an hour. A job's age is that of its last event
(when it finished); its events go with it (ON DELETE CASCADE in procrastinate's schema).

One statement of ours rather than procrastinate's `JobManager.delete_old_jobs` (which its
builtin `remove_old_jobs` task calls), read in its SQL (3.10, sql/queries.sql): it has a
single age for every status it deletes (so a failure could not be kept longer than a
success without deleting successes early in a second call), counts whole hours, and
deletes everything in one statement after sorting every job's events (DISTINCT ON) — a
long transaction on a table that was never pruned. This one takes `batch` rows at a time
(SKIP LOCKED: never waits on a worker finishing a job) and looks up each candidate's last
event through the events' job_id index. procrastinate's own trigger on DELETE unlinks the
periodic-task bookkeeping that references a deleted job.

The same task forgets the heartbeat rows of nodes silent for longer than the succeeded
jobs' retention (a node taken out of service): until then `vigil status` lists them as
gone and /metrics has them with `vigil_cluster_node_up 0`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import procrastinate

DAY_S = 86400.0

PRUNE_QUERY = """
WITH doomed AS (
    SELECT j.id
      FROM procrastinate_jobs j
     WHERE j.status IN ('succeeded', 'cancelled', 'failed', 'aborted')
       AND (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id)
           < now() - make_interval(secs => CASE
                 WHEN j.queue_name = %(maintenance_queue)s THEN %(maintenance_s)s
                 WHEN j.status IN ('failed', 'aborted') THEN %(failed_s)s
                 ELSE %(succeeded_s)s END)
     ORDER BY j.id
     LIMIT %(batch)s
       FOR UPDATE OF j SKIP LOCKED
)
DELETE FROM procrastinate_jobs j USING doomed WHERE j.id = doomed.id
RETURNING j.status::text AS status
"""


@dataclass(frozen=True)
class Retention:
    """How long finished jobs are kept, in seconds."""

    succeeded_s: float = 7 * DAY_S  # succeeded and cancelled
    failed_s: float = 30 * DAY_S  # failed and aborted
    maintenance_s: float = 3600.0  # any finished job of the maintenance queue

    @classmethod
    def from_days(cls, succeeded: float, failed: float) -> Retention:
        return cls(succeeded_s=succeeded * DAY_S, failed_s=failed * DAY_S)


async def prune_jobs(
    app: procrastinate.App, retention: Retention, *, maintenance_queue: str, batch: int = 5000
) -> Counter[str]:
    """Delete finished jobs past their retention, `batch` rows per statement (short
    transactions: workers fetching and finishing jobs never wait long). Returns the count
    deleted per status."""
    deleted: Counter[str] = Counter()
    while True:
        rows = await app.connector.execute_query_all_async(
            PRUNE_QUERY,
            maintenance_queue=maintenance_queue,
            maintenance_s=float(retention.maintenance_s),
            failed_s=float(retention.failed_s),
            succeeded_s=float(retention.succeeded_s),
            batch=batch,
        )
        deleted.update(str(r["status"]) for r in rows)
        if len(rows) < batch:
            return deleted


FORGET_NODES_QUERY = """
DELETE FROM vigil_cluster_nodes WHERE last_seen < now() - make_interval(secs => %(age_s)s)
RETURNING node
"""


async def forget_silent_nodes(app: procrastinate.App, retention: Retention) -> int:
    """Delete the heartbeat rows of nodes silent for longer than `retention.succeeded_s`."""
    rows = await app.connector.execute_query_all_async(
        FORGET_NODES_QUERY, age_s=float(retention.succeeded_s)
    )
    return len(rows)
