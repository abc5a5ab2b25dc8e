"""The whole cluster's state in one read, for /metrics on any node (issue 16).

One statement on one connection returns everything: the node heartbeats, the recorded
leader and epoch of each vCenter, the advisory locks held in this database (which tell
whether a recorded leader still holds its lock, and which slots are taken), the job rows
counted by queue and status, the oldest job ready to run per queue, the backup jobs
running now and their hosts and datastores. It reads only system views (`pg_locks`,
`pg_stat_activity`), vigil's two small tables and procrastinate's jobs table, whose
finished rows are pruned (cluster/retention.py), so its cost stays flat.

A recorded leader is *holding* when a session holds the advisory lock of that vCenter
right now (`pg_locks`); a bigint advisory key shows there as (classid, objid) = (high,
low 32 bits) with objsubid = 1 ("pg_locks" in the PostgreSQL manual).

Slots in use are counted from the locks actually held, not from the jobs' status: a job
still waiting for a slot holds none. The keys are derived from the slot names of the
running jobs and the node's own `host_slots`/`datastore_slots` (every node has the same
`[cluster]` table, so every node counts the same).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cluster import db, slots
from cluster.leases import JOB_APP_PREFIX
from cluster.queue import BACKUP_QUEUE, BACKUP_TASK, MAINT_QUEUE

QUEUES = (BACKUP_QUEUE, MAINT_QUEUE)
# procrastinate's job statuses (its procrastinate_job_status enum).
STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")

STATS_QUERY = """
SELECT
  (SELECT coalesce(json_agg(json_build_array(
       node, role, extract(epoch FROM now() - last_seen)) ORDER BY node, role), '[]')
     FROM vigil_cluster_nodes) AS nodes,
  (SELECT coalesce(json_agg(json_build_array(vcenter, epoch, leader_node)
       ORDER BY vcenter), '[]')
     FROM vigil_cluster_epochs) AS leaders,
  (SELECT coalesce(json_agg(((l.classid::bigint << 32) | l.objid::bigint)::text), '[]')
     FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  ) AS held,
  (SELECT coalesce(json_agg(json_build_array(queue_name, status, n)), '[]')
     FROM (SELECT queue_name, status::text AS status, count(*) AS n
             FROM procrastinate_jobs GROUP BY 1, 2) c) AS jobs,
  (SELECT coalesce(json_agg(json_build_array(queue_name, age)), '[]')
     FROM (SELECT j.queue_name, max(extract(epoch FROM now() - coalesce(j.scheduled_at,
                  (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id))))
                  AS age
             FROM procrastinate_jobs j
            WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
            GROUP BY 1) o) AS oldest,
  (SELECT coalesce(json_agg(application_name), '[]')
     FROM pg_stat_activity
    WHERE application_name LIKE %(app_like)s AND datname = current_database()) AS sessions,
  (SELECT coalesce(json_agg(json_build_array(id, args->'host', args->'datastores')), '[]')
     FROM procrastinate_jobs
    WHERE status = 'doing' AND task_name = %(task)s) AS doing
"""


@dataclass(frozen=True)
class NodeStat:
    node: str
    role: str
    heartbeat_age_s: float


@dataclass(frozen=True)
class LeaderStat:
    vcenter: str
    epoch: int
    node: str
    holding: bool  # a session holds the vCenter's leader lock now


@dataclass(frozen=True)
class ClusterStats:
    nodes: list[NodeStat]
    leaders: list[LeaderStat]
    jobs: dict[tuple[str, str], int]  # (queue, status) -> rows
    oldest_ready_s: dict[str, float]  # queue -> age of its oldest job ready to run
    running: dict[str, int]  # node -> backup jobs whose session is open
    slots: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, name) -> taken


async def read_stats(
    conn: psycopg.AsyncConnection, *, host_slots: int, datastore_slots: int
) -> ClusterStats:
    cur = await conn.execute(
        STATS_QUERY,  # type: ignore[arg-type]
        {"app_like": f"{JOB_APP_PREFIX}%", "task": BACKUP_TASK},
    )
    row = await cur.fetchone()
    assert row is not None
    return stats_from(
        *(_json(v) for v in row), host_slots=host_slots, datastore_slots=datastore_slots
    )


def _json(value: Any) -> Any:
    # psycopg decodes json columns itself; text only if a loader was changed.
    return json.loads(value) if isinstance(value, str) else value


def stats_from(
    nodes: list[list[Any]],
    leaders: list[list[Any]],
    held: list[str],
    jobs: list[list[Any]],
    oldest: list[list[Any]],
    sessions: list[str],
    doing: list[list[Any]],
    *,
    host_slots: int,
    datastore_slots: int,
) -> ClusterStats:
    """Pure: the statement's columns as ClusterStats."""
    locks = {int(k) for k in held}
    running: dict[str, int] = {}
    open_jobs: set[int] = set()
    for name in sessions:
        job_id, _, node = name.removeprefix(JOB_APP_PREFIX).partition(":")
        if job_id.isdigit() and node:
            running[node] = running.get(node, 0) + 1
            open_jobs.add(int(job_id))
    taken: dict[tuple[str, str], int] = {}
    for job_id, host, datastores in doing:
        if int(job_id) not in open_jobs:
            continue  # a dead worker's job: its session, and so its slots, are gone
        needs = slots.slot_needs(
            str(host or ""), [str(d) for d in datastores or ()], host_slots, datastore_slots
        )
        for need in needs:
            taken[(need.kind, need.name)] = sum(k in locks for k in need.keys())
    return ClusterStats(
        nodes=[NodeStat(str(n), str(r), float(a)) for n, r, a in nodes],
        leaders=[
            LeaderStat(str(vc), int(ep), str(node), db.lock_key("leader", str(vc)) in locks)
            for vc, ep, node in leaders
        ],
        jobs={(str(q), str(s)): int(n) for q, s, n in jobs},
        oldest_ready_s={str(q): max(0.0, float(a or 0.0)) for q, a in oldest},
        running=running,
        slots=taken,
    )
