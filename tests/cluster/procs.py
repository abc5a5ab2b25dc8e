"""Cluster node processes for the tests (and bench/bench_cluster.py), run as
`python tests/cluster/procs.py worker|elector ...` so a test can kill -9 them.

The worker's backup is a stand-in for the daemon's workflow that records what it does in
the database (start, end, the committed point): the tests judge concurrency and
exactly-once from those rows, by the database's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster.election import LeaderElector
from cluster.queue import PRUNE_CRON, BackupJob, JobRun
from cluster.worker import WorkerSettings, run_worker

EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS test_events (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    vm text NOT NULL,
    host text NOT NULL,
    node text NOT NULL,
    attempt int NOT NULL,
    kind text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS test_gates (name text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS test_points (
    vm text NOT NULL,
    job_id bigint NOT NULL,
    node text NOT NULL,
    epoch bigint NOT NULL
);
"""


def open_gate(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO test_gates VALUES (%s) ON CONFLICT DO NOTHING", (name,))


def create_test_tables(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(EVENTS_SCHEMA)


async def _event(run: JobRun, kind: str) -> None:
    await run.conn.execute(
        "INSERT INTO test_events (job_id, vm, host, node, attempt, kind) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (run.job_id, run.job.vm, run.job.host, run.worker, run.attempt, kind),
    )


async def _wait_gate(run: JobRun, gate: str) -> None:
    while True:
        cur = await run.conn.execute("SELECT 1 FROM test_gates WHERE name = %s", (gate,))
        if await cur.fetchone():
            return
        await asyncio.sleep(0.1)


async def recording_backup(job: BackupJob, run: JobRun) -> None:
    """payload: seconds (how long the 'backup' takes), gate (then wait until the test
    opens that gate: a row in test_gates), fail_attempts (fail that many first attempts),
    noop (record nothing: for the benchmark), t (defer time, bench)."""
    if job.payload.get("noop"):
        if "t" in job.payload:
            lat = time.time() - float(job.payload["t"])
            await run.conn.execute(
                "INSERT INTO bench_latency (job_id, seconds) VALUES (%s, %s)", (run.job_id, lat)
            )
        return
    await _event(run, "start")
    await asyncio.sleep(float(job.payload.get("seconds", 0.5)))
    if gate := job.payload.get("gate"):
        await _wait_gate(run, str(gate))
    if run.attempt < int(job.payload.get("fail_attempts", 0)):
        await _event(run, "fail")
        raise RuntimeError("planned failure")
    await run.check_epoch()
    await run.conn.execute(
        "INSERT INTO test_points (vm, job_id, node, epoch) VALUES (%s, %s, %s, %s)",
        (job.vm, run.job_id, run.worker, job.epoch),
    )
    await _event(run, "end")


async def _elector(url: str, vcenter: str, node: str) -> None:
    elector = LeaderElector(url, vcenter, node)

    async def term(epoch: int) -> None:
        print(f"LEADER {epoch} {time.time():.3f}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            print(f"LOST {epoch} {time.time():.3f}", flush=True)

    runner = asyncio.create_task(elector.run())
    await elector.lead(term)
    await runner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["worker", "elector"])
    ap.add_argument("url")
    ap.add_argument("node")
    ap.add_argument("--vcenter", default="vc-1")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--host-slots", type=int, default=2)
    ap.add_argument("--datastore-slots", type=int, default=4)
    ap.add_argument("--stalled-after", type=float, default=3.0)
    ap.add_argument("--shutdown-timeout", type=float, default=10.0)
    ap.add_argument("--requeue-every", type=int, default=1)
    ap.add_argument("--prune-cron", default=PRUNE_CRON)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.mode == "elector":
        asyncio.run(_elector(args.url, args.vcenter, args.node))
        return
    settings = WorkerSettings(
        node=args.node,
        concurrency=args.concurrency,
        host_slots=args.host_slots,
        datastore_slots=args.datastore_slots,
        shutdown_timeout_s=args.shutdown_timeout,
        stalled_after_s=args.stalled_after,
        heartbeat_interval_s=min(1.0, args.stalled_after / 3),
        requeue_every_s=args.requeue_every,
        retry_wait_s=0,
        retry_exponential_s=1,
        node_heartbeat_s=1.0,
        fetch_poll_s=1.0,
        prune_cron=args.prune_cron,
    )
    print("WORKER STARTED", flush=True)
    asyncio.run(run_worker(args.url, recording_backup, settings))
    print("WORKER STOPPED", flush=True)


if __name__ == "__main__":
    main()
