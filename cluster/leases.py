"""The connections that hold running jobs' slots ("leases"), reused between jobs.

Each running job needs a connection of its own: its slots are session-level advisory
locks, and they must end with the job, or with the worker when it dies. Opening one per
job cost ~10–20 ms of connect and authentication here (bench_cluster.py), so a worker
keeps the connections of jobs that ended cleanly and hands them to the next job after
`pg_advisory_unlock_all()`. A connection a job left in doubt (cancelled mid-query, lost,
an error from the database) is closed, never reused; a reused connection that turns out
dead (the database restarted while it sat idle) is replaced once, transparently.
"""

from __future__ import annotations

import contextlib

import psycopg

from cluster import db
from cluster.fencing import verify_epoch

JOB_APP_PREFIX = "vigil-job:"
IDLE_APP_NAME = "vigil-job-idle"

# The job's first statement names the session after the job (so pg_stat_activity shows,
# on any node, which jobs run where: see nodes.running_jobs) and checks its epoch.
_CLAIM = (
    "SELECT set_config('application_name', %(name)s, false), "
    "(SELECT epoch FROM vigil_cluster_epochs WHERE vcenter = %(vc)s FOR SHARE)"
)


async def _claim(
    conn: psycopg.AsyncConnection, job_id: int, node: str, vcenter: str, epoch: int
) -> None:
    name = f"{JOB_APP_PREFIX}{job_id}:{node}"[:63]
    cur = await conn.execute(_CLAIM, {"name": name, "vc": vcenter})
    row = await cur.fetchone()
    verify_epoch(vcenter, epoch, row[1] if row else None)


class LeasePool:
    def __init__(self, url: str, node: str, *, keep: int = 4) -> None:
        self.url = url
        self.node = node
        self.keep = keep
        self._idle: list[psycopg.AsyncConnection] = []
        self.opened = 0

    async def _fresh(self) -> psycopg.AsyncConnection:
        self.opened += 1
        return await db.connect(self.url, IDLE_APP_NAME, lease=True)

    async def acquire(self, job_id: int, vcenter: str, epoch: int) -> psycopg.AsyncConnection:
        """A connection for a job, after checking the job's epoch on it (the job's first
        query doubles as the liveness check of a reused connection). Raises
        StaleEpochError for a job of a deposed scheduler."""
        while self._idle:
            conn = self._idle.pop()
            try:
                await _claim(conn, job_id, self.node, vcenter, epoch)
            except psycopg.OperationalError:
                await _close(conn)
                continue
            except BaseException:
                await _close(conn)
                raise
            return conn
        conn = await self._fresh()
        try:
            await _claim(conn, job_id, self.node, vcenter, epoch)
        except BaseException:
            await _close(conn)
            raise
        return conn

    async def release(self, conn: psycopg.AsyncConnection, *, reusable: bool) -> None:
        """Give the job's slots back: by ending the session, or by unlocking everything
        when the connection is kept for the next job."""
        if reusable and len(self._idle) < self.keep and not conn.closed:
            try:
                await conn.execute(
                    "SELECT pg_advisory_unlock_all(), set_config('application_name', %s, false)",
                    (IDLE_APP_NAME,),
                )
            except psycopg.Error:
                await _close(conn)
                return
            self._idle.append(conn)
            return
        await _close(conn)

    async def close(self) -> None:
        while self._idle:
            await _close(self._idle.pop())


async def _close(conn: psycopg.AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
