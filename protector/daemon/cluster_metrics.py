"""The cluster's series on every node's /metrics (docs/cluster.md, "Metrics").

Every `vigil_cluster_*` series is read from PostgreSQL (cluster/observe.py, one
statement) and is the same on every node: Prometheus scraping three nodes gets three
copies, so aggregate with `max without (instance) (...)` (or `max by (vcenter)`,
`max by (node)`...), never `sum`. The only series of this collector that differs per node
is `vigil_database_up`: whether *this* node's last read of the database worked.

A scrape never waits on the database more than once per `ttl` seconds: the first scrape
after the cache expired reads (one statement on a connection kept open, bounded by
`timeout`); concurrent scrapes wait for that read, later ones within `ttl` use its result.
A failed read is cached for `ttl` too, so scraping a node whose database is down stays
cheap, and shows `vigil_database_up 0` and no cluster series (stale numbers would look
current).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import psycopg
import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster import db
from cluster.observe import QUEUES, STATUSES, ClusterStats, read_stats

log = structlog.get_logger(__name__)

# A node is up while its heartbeat is younger than this many heartbeat intervals (as in
# `vigil status`: nodes.NodeRow.is_alive).
ALIVE_INTERVALS = 3


class ClusterMetrics(Collector):
    def __init__(
        self,
        url: str,
        node: str,
        *,
        host_slots: int,
        datastore_slots: int,
        heartbeat_s: float = 5.0,
        ttl: float = 5.0,
        timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.node = node
        self.host_slots = host_slots
        self.datastore_slots = datastore_slots
        self.heartbeat_s = heartbeat_s
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self.stats: ClusterStats | None = None
        self.reads = 0  # attempts to read the database (connect + statement)
        self._read_at: float | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    def fresh(self) -> bool:
        return self._read_at is not None and self.clock() - self._read_at < self.ttl

    async def refresh(self) -> None:
        """Read the cluster's state unless the last read (or failure) is younger than ttl."""
        if self.fresh():
            return
        async with self._lock:
            if self.fresh():
                return  # a concurrent scrape read it while this one waited
            try:
                async with asyncio.timeout(self.timeout):
                    self.stats = await self._read()
            except (psycopg.Error, TimeoutError, OSError) as exc:
                log.warning("cluster.metrics_read_failed", error=str(exc).strip() or repr(exc))
                self.stats = None
                await self._drop()
            except asyncio.CancelledError:
                # Left mid-statement: never reuse that connection.
                await asyncio.shield(self._drop())
                raise
            self._read_at = self.clock()

    async def _read(self) -> ClusterStats:
        self.reads += 1
        if self._conn is None or self._conn.closed:
            self._conn = await db.connect(self.url, f"vigil-metrics:{self.node}")
        return await read_stats(
            self._conn, host_slots=self.host_slots, datastore_slots=self.datastore_slots
        )

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        await db.close_quietly(conn)

    async def close(self) -> None:
        await self._drop()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "vigil_database_up",
            "1 if this node's last read of the cluster database worked (per node)",
        )
        up.add_metric([], 1.0 if self.stats is not None else 0.0)
        yield up
        if self.stats is not None:
            yield from families(self.stats, self.heartbeat_s)


def families(st: ClusterStats, heartbeat_s: float) -> list[GaugeMetricFamily]:
    """Pure: the `vigil_cluster_*` families of one read. Identical on every node."""
    same = " (the same on every node: aggregate with max, not sum)"
    node_up = GaugeMetricFamily(
        "vigil_cluster_node_up",
        f"1 while the node's heartbeat is younger than {ALIVE_INTERVALS} intervals" + same,
        labels=["node", "role"],
    )
    node_age = GaugeMetricFamily(
        "vigil_cluster_node_heartbeat_age_seconds",
        "Seconds since the node's last heartbeat, by the database's clock" + same,
        labels=["node", "role"],
    )
    for n in st.nodes:
        alive = n.heartbeat_age_s <= ALIVE_INTERVALS * heartbeat_s
        node_up.add_metric([n.node, n.role], 1.0 if alive else 0.0)
        node_age.add_metric([n.node, n.role], round(n.heartbeat_age_s, 3))
    holding = GaugeMetricFamily(
        "vigil_cluster_leader_holding",
        "1 while the vCenter's recorded leader holds the leadership lock; 0: no leader now" + same,
        labels=["vcenter", "node"],
    )
    epoch = GaugeMetricFamily(
        "vigil_cluster_leader_epoch",
        "The vCenter's leadership epoch (one more per takeover)" + same,
        labels=["vcenter"],
    )
    for ld in st.leaders:
        holding.add_metric([ld.vcenter, ld.node], 1.0 if ld.holding else 0.0)
        epoch.add_metric([ld.vcenter], float(ld.epoch))
    jobs = GaugeMetricFamily(
        "vigil_cluster_jobs",
        "Job rows in the queue by status (finished ones until pruned)" + same,
        labels=["queue", "status"],
    )
    # Every status of every queue, 0 when none: `== 0` and `> 0` alerts need a series.
    for queue in sorted({*QUEUES, *(q for q, _ in st.jobs)}):
        for status in STATUSES:
            jobs.add_metric([queue, status], float(st.jobs.get((queue, status), 0)))
    oldest = GaugeMetricFamily(
        "vigil_cluster_oldest_ready_job_age_seconds",
        "Age of the oldest job ready to run and not yet taken (0: none)" + same,
        labels=["queue"],
    )
    for queue in sorted({*QUEUES, *st.oldest_ready_s}):
        oldest.add_metric([queue], round(st.oldest_ready_s.get(queue, 0.0), 3))
    running = GaugeMetricFamily(
        "vigil_cluster_running_backups",
        "Backup jobs running on the node now (from the sessions holding their slots)" + same,
        labels=["node"],
    )
    workers = {n.node for n in st.nodes if n.role in ("worker", "all")}
    for node in sorted(workers | set(st.running)):
        running.add_metric([node], float(st.running.get(node, 0)))
    slots = GaugeMetricFamily(
        "vigil_cluster_slots_in_use",
        "Slots of a host or datastore held by running backups (kind: host, datastore)" + same,
        labels=["kind", "name"],
    )
    for (kind, name), count in sorted(st.slots.items()):
        slots.add_metric([kind, name], float(count))
    return [node_up, node_age, holding, epoch, jobs, oldest, running, slots]
