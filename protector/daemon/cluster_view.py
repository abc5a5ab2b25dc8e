"""The cluster's picture on a node's status page (docs/cluster.md): nodes, the leader per
vCenter, the backup jobs running and waiting, read from PostgreSQL every few seconds.

The reads share one connection kept open for the node's life, as the metrics collector
does (cluster_metrics.py): a new connection every 2 s is a backend process forked and
authenticated on the server each time, per node. A read that fails (the server restarted,
the network broke) or is cancelled mid-statement drops the connection; the next read
opens a new one, so the view recovers by itself when the database is back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from cluster import db, nodes
from cluster.fencing import current_epochs
from cluster.queue import BACKUP_TASK

# A read never waits on the database longer than this (a dead network would otherwise
# hold it until TCP gives up); the status page shows the error meanwhile.
READ_TIMEOUT_S = 10.0


class ClusterView:
    """One node's reader of the cluster's picture, on a connection of its own."""

    def __init__(self, url: str, node: str, *, alive_s: float) -> None:
        self.url = url
        self.node = node
        self.alive_s = alive_s  # the node heartbeat interval (nodes.NodeRow.is_alive)
        self.reads = 0  # reads attempted
        self.connects = 0  # connections opened (one per database outage, not per read)
        self._conn: psycopg.AsyncConnection | None = None

    async def read(self) -> dict[str, Any]:
        self.reads += 1
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                if self._conn is None or self._conn.closed:
                    self.connects += 1
                    self._conn = await db.connect(self.url, f"vigil-status:{self.node}")
                return await read_cluster_view(self._conn, self.alive_s)
        except BaseException:
            # Whatever failed (or was cancelled mid-statement), this connection is not
            # reused: its state is unknown.
            await asyncio.shield(self._drop())
            raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        await db.close_quietly(conn)

    async def close(self) -> None:
        await self._drop()


async def read_cluster_view(conn: psycopg.AsyncConnection, alive_s: float) -> dict[str, Any]:
    """Nodes (alive or not), the leader and epoch per vCenter, the backup jobs running now
    and where, and how many wait — what `vigil status` shows for a cluster."""
    rows = await nodes.list_nodes(conn)
    epochs = await current_epochs(conn)
    running = await nodes.running_jobs(conn)
    cur = await conn.execute(
        "SELECT id, args->>'vm', args->'payload'->>'name', status FROM procrastinate_jobs "
        "WHERE task_name = %s AND status IN ('todo', 'doing') ORDER BY id",
        (BACKUP_TASK,),
    )
    jobs = await cur.fetchall()
    alive = {r.node for r in rows if r.is_alive(alive_s)}
    names = {j[0]: j[2] or j[1] for j in jobs}
    return {
        "nodes": [
            {
                "node": r.node,
                "role": r.role,
                "pid": r.pid,
                "alive": r.is_alive(alive_s),
                "last_seen_seconds": round(r.age_s, 1),
            }
            for r in rows
        ],
        "leaders": [
            {"vcenter": vc, "epoch": ep, "node": leader, "alive": leader in alive}
            for vc, (ep, leader) in sorted(epochs.items())
        ],
        "running_jobs": [
            {"job": r.job_id, "node": r.node, "vm": names.get(r.job_id, "")} for r in running
        ],
        "queued_jobs": sum(1 for j in jobs if j[3] == "todo"),
    }
