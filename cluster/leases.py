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
from cluster.fencing import check_epoch


class LeasePool:
    def __init__(self, url: str, node: str, *, keep: int = 4) -> None:
        self.url = url
        self.node = node
        self.keep = keep
        self._idle: list[psycopg.AsyncConnection] = []
        self.opened = 0

    async def _fresh(self) -> psycopg.AsyncConnection:
        self.opened += 1
        return await db.connect(self.url, f"vigil-job:{self.node}")

    async def acquire(self, vcenter: str, epoch: int) -> psycopg.AsyncConnection:
        """A connection for a job, after checking the job's epoch on it (the job's first
        query doubles as the liveness check of a reused connection). Raises
        StaleEpochError for a job of a deposed scheduler."""
        while self._idle:
            conn = self._idle.pop()
            try:
                await check_epoch(conn, vcenter, epoch)
            except psycopg.OperationalError:
                await _close(conn)
                continue
            except BaseException:
                await _close(conn)
                raise
            return conn
        conn = await self._fresh()
        try:
            await check_epoch(conn, vcenter, epoch)
        except BaseException:
            await _close(conn)
            raise
        return conn

    async def release(self, conn: psycopg.AsyncConnection, *, reusable: bool) -> None:
        """Give the job's slots back: by ending the session, or by unlocking everything
        when the connection is kept for the next job."""
        if reusable and len(self._idle) < self.keep and not conn.closed:
            try:
                await conn.execute("SELECT pg_advisory_unlock_all()")
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
