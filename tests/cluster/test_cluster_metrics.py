"""The whole cluster on any node's /metrics, read from a real PostgreSQL: nodes and their
liveness, the leader per vCenter and whether it holds its lock, jobs by queue and status,
the oldest ready job, running backups per node and the slots they hold; the same on every
node, cached so scrapes cannot load the database, and `promtool check metrics` clean."""

from __future__ import annotations

import asyncio
import shutil
from asyncio.subprocess import PIPE, STDOUT

import aiohttp
import pytest
from cluster_helpers import defer, nodes, rows, start_worker, wait_for
from pg_server import free_port
from procs import create_test_tables, open_gate
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster import db
from cluster import nodes as cnodes
from cluster.election import LeaderElector
from cluster.fencing import take_over
from cluster.observe import stats_from
from cluster.queue import BACKUP_TASK, BackupJob, make_app, prepare_database
from protector.daemon.cluster_metrics import ClusterMetrics
from protector.daemon.metrics import Metrics
from protector.daemon.status_server import StatusServer

pytestmark = pytest.mark.timeout(180)
PROMTOOL = shutil.which("promtool")


def job(vm: str, epoch: int = 1, **payload: object) -> BackupJob:
    return BackupJob("vc-1", vm, "vc-1/host-1", ("vc-1/ds-1", "vc-1/ds-2"), epoch, payload)


def samples(
    text: str, prefix: str = "vigil_"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(prefix):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


async def test_any_nodes_metrics_show_the_whole_cluster(pg_url, tmp_path):
    url = pg_url
    await prepare_database(url)
    create_test_tables(url)
    elector = LeaderElector(url, "vc-1", "s1")
    electing = asyncio.create_task(elector.run())
    metrics = Metrics()
    # Alive: seen within 3 heartbeats of 2 s (procs.py workers beat every second).
    cm = ClusterMetrics(url, "s1", host_slots=2, datastore_slots=3, heartbeat_s=2.0, ttl=0.0)
    metrics.registry.register(cm)
    server = StatusServer(lambda: {}, lambda: True, metrics, before_metrics=cm.refresh)
    await server.start("127.0.0.1:0")
    try:
        assert await asyncio.wait_for(elector.wait_elected(), 30) == 1
        async with await db.connect(url, "test") as conn:
            await cnodes.beat(conn, "s1", "scheduler")
            await cnodes.beat(conn, "gone", "worker")
            await conn.execute(
                "UPDATE vigil_cluster_nodes SET last_seen = now() - interval '60 s' "
                "WHERE node = 'gone'"
            )
            # vc-2's recorded leader (epoch 3) holds nothing: no leader there now.
            for _ in range(3):
                await take_over(conn, "vc-2", "s9")
        with nodes(tmp_path) as start:
            start_worker(start, url, "w1", concurrency=2, host_slots=2, datastore_slots=3)
            _, stale = await defer(url, job("vm-a", seconds=0, gate="a"), job("vm-b", 0))
            await wait_for(
                lambda: rows(url, "SELECT 1 FROM test_events WHERE kind = 'start'"),
                60,
                "vm-a's backup to start",
            )
            # Waiting behind vm-a's (its VM lock), and one scheduled an hour from now.
            (waiting,) = await defer(url, job("vm-a"))
            app = make_app(url)
            async with app.open_async():
                later = await (
                    app.tasks[BACKUP_TASK]
                    .configure(lock="vm:vm-c", schedule_in={"hours": 1})
                    .defer_async(**job("vm-c").to_args())
                )
            for job_id, age in ((waiting, "100 s"), (later, "1000 s")):
                rows(
                    url,
                    "UPDATE procrastinate_events SET at = at - %s::interval "
                    "WHERE job_id = %s RETURNING 1",
                    (age, job_id),
                )
            await wait_for(
                lambda: rows(
                    url,
                    "SELECT 1 FROM procrastinate_jobs WHERE id = %s AND status = 'failed'",
                    (stale,),
                ),
                60,
                "the stale job to fail",
            )
            async with await db.connect(url, "test") as conn:
                await cnodes.beat(conn, "s1", "scheduler")  # fresh: alive means seen within 3 × 2 s
            text = await scrape(server.port)
            found = samples(text)

            assert value(found, "vigil_database_up") == 1
            up = {k[1]: v for k, v in found.items() if k[0] == "vigil_cluster_node_up"}
            assert up == {
                (("node", "gone"), ("role", "worker")): 0,
                (("node", "s1"), ("role", "scheduler")): 1,
                (("node", "w1"), ("role", "worker")): 1,
            }
            age = value(
                found, "vigil_cluster_node_heartbeat_age_seconds", node="gone", role="worker"
            )
            assert age is not None and 60 <= age < 120
            assert value(found, "vigil_cluster_leader_holding", vcenter="vc-1", node="s1") == 1
            assert value(found, "vigil_cluster_leader_holding", vcenter="vc-2", node="s9") == 0
            assert value(found, "vigil_cluster_leader_epoch", vcenter="vc-1") == 1
            assert value(found, "vigil_cluster_leader_epoch", vcenter="vc-2") == 3
            jobs = {
                dict(k[1])["status"]: v
                for k, v in found.items()
                if k[0] == "vigil_cluster_jobs" and dict(k[1])["queue"] == "backups"
            }
            assert jobs == {
                "todo": 2,
                "doing": 1,
                "failed": 1,
                "succeeded": 0,
                "cancelled": 0,
                "aborted": 0,
            }
            # The waiting job, not the one scheduled for later (older, but not ready).
            oldest = value(found, "vigil_cluster_oldest_ready_job_age_seconds", queue="backups")
            assert oldest is not None and 100 <= oldest < 160, oldest
            assert value(found, "vigil_cluster_running_backups", node="w1") == 1
            assert value(found, "vigil_cluster_running_backups", node="gone") == 0
            taken = {
                dict(k[1])["name"]: v
                for k, v in found.items()
                if k[0] == "vigil_cluster_slots_in_use"
            }
            assert taken == {"vc-1/host-1": 1, "vc-1/ds-1": 1, "vc-1/ds-2": 1}

            if PROMTOOL:
                check = await asyncio.create_subprocess_exec(
                    PROMTOOL, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
                )
                out, _ = await check.communicate(text.encode())
                assert check.returncode == 0 and not out.strip(), out.decode()

            # The backup ends: nothing runs, no slot is held (vm-a's waiting job runs next
            # and is held at its gate too: open it for both).
            open_gate(url, "a")
            await wait_for(
                lambda: len(rows(url, "SELECT 1 FROM test_events WHERE kind = 'end'")) == 2,
                60,
                "both backups of vm-a",
            )
            await wait_for(
                lambda: not rows(url, "SELECT 1 FROM procrastinate_jobs WHERE status = 'doing'"),
                30,
                "the jobs to be recorded as done",
            )
            found = samples(await scrape(server.port))
            assert value(found, "vigil_cluster_running_backups", node="w1") == 0
            assert not [k for k in found if k[0] == "vigil_cluster_slots_in_use"]
            assert value(found, "vigil_cluster_jobs", queue="backups", status="succeeded") == 2
    finally:
        await server.stop()
        await cm.close()
        elector.stop()
        await electing
    # After the elector stopped, vc-1's recorded leader holds nothing.
    await cm.refresh()
    assert not [ld for ld in cm.stats.leaders if ld.holding]
    await cm.close()


async def test_scrapes_within_the_ttl_read_the_database_once(pg_url):
    url = pg_url
    await prepare_database(url)
    now = [100.0]
    cm = ClusterMetrics(url, "n1", host_slots=2, datastore_slots=4, ttl=5.0, clock=lambda: now[0])
    try:
        await cm.refresh()
        await cm.refresh()
        assert cm.reads == 1 and cm.stats is not None and cm.stats.nodes == []
        async with await db.connect(url, "test") as conn:
            await cnodes.beat(conn, "n2", "worker")
        now[0] += 4.9
        await asyncio.gather(*(cm.refresh() for _ in range(10)))
        assert cm.reads == 1 and cm.stats.nodes == []  # still the cached read
        now[0] += 0.2
        await asyncio.gather(*(cm.refresh() for _ in range(10)))  # ten scrapes, one read
        assert cm.reads == 2 and [n.node for n in cm.stats.nodes] == ["n2"]
    finally:
        await cm.close()


async def test_database_down_shows_up_0_and_no_stale_cluster_series(pg_url):
    await prepare_database(pg_url)
    now = [0.0]
    good = ClusterMetrics(pg_url, "n1", host_slots=2, datastore_slots=4, clock=lambda: now[0])
    await good.refresh()
    await good.close()
    dead_url = f"postgresql://postgres:x@127.0.0.1:{free_port()}/vigil"
    cm = ClusterMetrics(dead_url, "n1", host_slots=2, datastore_slots=4, clock=lambda: now[0])
    cm.stats = good.stats  # what a node knew before its database went away
    metrics = Metrics()
    metrics.registry.register(cm)
    await cm.refresh()
    text = generate_latest(metrics.registry).decode()
    found = samples(text)
    assert value(found, "vigil_database_up") == 0
    assert not [k for k in found if k[0].startswith("vigil_cluster_")]
    await cm.refresh()  # within the ttl: no second attempt
    assert cm.reads == 1
    now[0] += 10
    await cm.refresh()
    assert cm.reads == 2


async def test_cluster_series_are_identical_on_every_node(pg_url):
    """So Prometheus scraping every node can aggregate them with max without (instance)."""
    url = pg_url
    await prepare_database(url)
    async with await db.connect(url, "test") as conn:
        await cnodes.beat(conn, "a", "worker")
        await cnodes.beat(conn, "b", "scheduler")
        await take_over(conn, "vc-1", "b")
    texts = []
    for node in ("a", "b"):
        cm = ClusterMetrics(url, node, host_slots=2, datastore_slots=4)
        registry = Metrics().registry
        registry.register(cm)
        await cm.refresh()
        await cm.close()
        texts.append(generate_latest(registry).decode())
    a, b = (
        {k: v for k, v in samples(t, "vigil_cluster_").items() if "heartbeat_age" not in k[0]}
        for t in texts
    )
    assert a == b and a


def test_slots_are_counted_from_locks_held_by_live_jobs():
    """Pure: a doing job whose session is gone (its worker died) holds no slot; a live
    job waiting for its slots holds none either."""
    from cluster.slots import SlotNeed

    held = [str(SlotNeed("host", "h", 2).keys()[1]), str(SlotNeed("datastore", "d", 4).keys()[0])]
    st = stats_from(
        [],
        [],
        held,
        [],
        [],
        ["vigil-job:7:w1", "vigil-job:8:w1", "vigil-job-idle"],
        [[7, "h", ["d"]], [8, "h2", ["d2"]], [9, "h3", ["d3"]]],
        host_slots=2,
        datastore_slots=4,
    )
    assert st.running == {"w1": 2}
    assert st.slots == {
        ("host", "h"): 1,
        ("datastore", "d"): 1,
        ("host", "h2"): 0,  # job 8 runs but waits for its slots
        ("datastore", "d2"): 0,
    }
