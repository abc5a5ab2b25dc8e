"""Node heartbeats: every node process writes (node, role, pid, last_seen) every few
seconds, so `vigil status` on any node can list the cluster's nodes and say which are
alive. A row is only as fresh as its last_seen; readers judge staleness (`is_alive`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
import structlog

from cluster import db

log = structlog.get_logger("vigil.cluster.nodes")

ROLES = ("all", "scheduler", "worker")

UPSERT = """
INSERT INTO vigil_cluster_nodes AS n (node, role, pid, started_at, last_seen)
VALUES (%s, %s, %s, now(), now())
ON CONFLICT (node, role) DO UPDATE
   SET pid = EXCLUDED.pid, last_seen = now(),
       started_at = CASE WHEN n.pid = EXCLUDED.pid THEN n.started_at ELSE now() END
"""


@dataclass(frozen=True)
class NodeRow:
    node: str
    role: str
    pid: int
    started_at: datetime
    last_seen: datetime
    age_s: float  # seconds since last_seen, by the database's clock

    def is_alive(self, interval: float) -> bool:
        """Pure: seen within three heartbeat intervals."""
        return self.age_s <= 3 * interval


async def beat(conn: psycopg.AsyncConnection, node: str, role: str, pid: int | None = None) -> None:
    await conn.execute(UPSERT, (node, role, os.getpid() if pid is None else pid))


async def list_nodes(conn: psycopg.AsyncConnection) -> list[NodeRow]:
    cur = await conn.execute(
        "SELECT node, role, pid, started_at, last_seen, "
        "extract(epoch FROM now() - last_seen) FROM vigil_cluster_nodes ORDER BY node, role"
    )
    return [NodeRow(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in await cur.fetchall()]


@dataclass(frozen=True)
class RunningJob:
    job_id: int
    node: str


async def running_jobs(conn: psycopg.AsyncConnection) -> list[RunningJob]:
    """The backup jobs running now and on which node, from the sessions that hold their
    slots: a job whose worker died has no session, so this never lists a dead job."""
    cur = await conn.execute(
        "SELECT application_name FROM pg_stat_activity "
        "WHERE application_name LIKE 'vigil-job:%%:%%'"
    )
    out = []
    for (name,) in await cur.fetchall():
        job_id, _, node = name.removeprefix("vigil-job:").partition(":")
        if job_id.isdigit():
            out.append(RunningJob(int(job_id), node))
    return sorted(out, key=lambda r: r.job_id)


async def forget_stale(conn: psycopg.AsyncConnection, older_than: timedelta) -> int:
    cur = await conn.execute(
        "DELETE FROM vigil_cluster_nodes WHERE last_seen < now() - %s", (older_than,)
    )
    return cur.rowcount


async def heartbeat_loop(
    url: str, node: str, role: str, *, interval: float = 5.0, stop: asyncio.Event | None = None
) -> None:
    """Beat until `stop` is set (or cancelled); survives database outages by reconnecting."""
    stop = stop or asyncio.Event()
    conn: psycopg.AsyncConnection | None = None
    try:
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = await db.connect(url, f"vigil-node:{node}")
                    await db.apply_schema(conn)
                async with asyncio.timeout(interval):
                    await beat(conn, node, role)
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("node heartbeat failed", node=node, error=str(exc).strip())
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(2.0):
                            await conn.close()
                conn = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await conn.close()
