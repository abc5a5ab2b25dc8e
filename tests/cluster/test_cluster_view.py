"""The cluster status view of a node (protector/daemon/cluster_view.py): its refreshes
share one PostgreSQL connection, which is replaced after the server restarts and closed
when the node stops."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from cluster_helpers import rows, wait_for

from cluster import db
from cluster import nodes as cnodes
from cluster.queue import prepare_database
from protector.daemon.cluster_node import ClusterNode

pytestmark = pytest.mark.timeout(180)

APP = "vigil-status:n1"


def backends(url: str) -> list[int]:
    """The server pids of the view's connections now."""
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid"
    return [r[0] for r in rows(url, sql, (APP,))]


def shows(node: ClusterNode, name: str) -> bool:
    view = node.cluster_view
    return "error" not in view and name in [n["node"] for n in view.get("nodes", [])]


async def beat(url: str, name: str) -> None:
    async with await db.connect(url, "test") as conn:
        await cnodes.beat(conn, name, "worker")


async def test_view_keeps_one_connection_and_recovers_after_a_restart(pg_private: Any) -> None:
    url = pg_private.url()
    await prepare_database(url)
    # The view loop needs only the node's name, its database and its stop event.
    node = ClusterNode(SimpleNamespace(cluster=SimpleNamespace(node="n1")), "worker")  # type: ignore[arg-type]
    node.url = url
    loop = asyncio.create_task(node._view_loop())
    try:
        await beat(url, "n2")
        await wait_for(lambda: shows(node, "n2"), 30, "the view to show n2")
        assert node.view is not None
        first = node.view.reads
        pids = backends(url)
        assert len(pids) == 1, f"the view holds {len(pids)} connections between reads"
        (pid,) = pids
        await wait_for(lambda: node.view.reads >= first + 3, 30, "three more refreshes")
        # Every refresh on the same server backend: one connection, not one per read.
        assert backends(url) == [pid] and node.view.connects == 1

        await asyncio.to_thread(pg_private.restart)
        await beat(url, "n3")  # written after the restart: only a working read shows it
        await wait_for(lambda: shows(node, "n3"), 60, "the view to recover after the restart")
        assert node.view.connects == 2
        (again,) = backends(url)
        settled = node.view.reads
        await wait_for(lambda: node.view.reads >= settled + 2, 30, "two more refreshes")
        assert backends(url) == [again] and node.view.connects == 2
    finally:
        node.stop.set()
        await asyncio.wait_for(loop, 30)
    # Closed when the node stops (the server notices the disconnect asynchronously).
    await wait_for(lambda: not backends(url), 30, "the view's connection to close")
