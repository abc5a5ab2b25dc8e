"""Scale-out overhead on a private PostgreSQL (Debian's postgresql; started and stopped by
this script on loopback): what the cluster machinery costs per backup job, not backup
throughput (the backup here is a no-op).

- dispatch latency: defer → the worker's backup callable starts, one job at a time into an
  idle worker (LISTEN/NOTIFY wakes it), p50/p99;
- queue throughput: 10,000 jobs queued (each with its per-VM lock), then drained by 2
  worker processes × concurrency 8; jobs/s from procrastinate's own event timestamps;
- PostgreSQL work per job during the drain: top-level statements (pg_stat_statements
  `calls`, ~ round trips) and new sessions (pg_stat_database.sessions) per job;
- housekeeping: one /metrics read of the whole cluster (cluster/observe.py) with the
  drained jobs in the table, then pruning them all (cluster/retention.py);
- scheduler failover: kill -9 the leading elector process, time until the standby leads;
  and the same for a frozen leader (SIGSTOP: only the lease's idle_session_timeout ends
  its term). Issue 16's goal for both is 15 s; tests/cluster bound them loosely;
- backups (cluster_backups.py): aggregate backup throughput of real `vigil watch`
  processes — one machine without [cluster], then 1 scheduler + 1, 2 and 3 workers —
  and the cluster's overhead per job.

    PYTHONPATH=. .venv/bin/python bench/bench_cluster.py [--jobs 10000] [--latency-jobs 200]
        [--parts queue,failover,backups] [--vms 6] [--disk-mib 256]

Prints a table; writes bench/results/cluster.json (queue and failover parts) and
bench/results/cluster_backups.json. A timing goal, never a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT),
    str(ROOT / "tests"),
    str(ROOT / "tests" / "cluster"),
    str(ROOT / "bench"),
]

import psycopg  # noqa: E402
from pg_server import PostgresServer  # noqa: E402
from procs import create_test_tables  # noqa: E402

from cluster import db  # noqa: E402
from cluster.observe import read_stats  # noqa: E402
from cluster.queue import (  # noqa: E402
    MAINT_QUEUE,
    BackupJob,
    defer_backup,
    make_app,
    prepare_database,
)
from cluster.retention import Retention, prune_jobs  # noqa: E402

PROCS = ROOT / "tests" / "cluster" / "procs.py"
MIB = 1024 * 1024


def start(tmp: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, str(PROCS), *args], stdout=f, stderr=subprocess.STDOUT, env=env
        )
    return proc, out


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def q(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def wait_until(probe, timeout: float, what: str, every: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def noop(i: int, **extra: object) -> BackupJob:
    return BackupJob(
        "vc-1", f"vm-{i}", f"host-{i % 64}", (f"ds-{i % 16}",), 1, {"noop": True, **extra}
    )


def worker_args(url: str, name: str, concurrency: int) -> list[str]:
    return [
        "worker", url, name, "--concurrency", str(concurrency),
        "--host-slots", "1000", "--datastore-slots", "1000", "--stalled-after", "30",
        "--requeue-every", "10",
    ]  # fmt: skip


async def latency(url: str, tmp: Path, n: int) -> dict[str, float]:
    proc, _ = start(tmp, "lat-worker", *worker_args(url, "lat", 1))
    try:
        wait_until(
            lambda: q(url, "SELECT 1 FROM vigil_cluster_nodes WHERE node='lat'"), 60, "the worker"
        )
        await asyncio.sleep(2.0)  # its LISTEN connection is up
        app = make_app(url)
        async with app.open_async():
            for i in range(n):
                before = len(q(url, "SELECT 1 FROM bench_latency"))
                await defer_backup(app, noop(i, t=time.time()))
                wait_until(
                    lambda b=before: len(q(url, "SELECT 1 FROM bench_latency")) > b,
                    30,
                    "a job to start",
                )
    finally:
        stop(proc)
    lat = [float(r[0]) * 1000 for r in q(url, "SELECT seconds FROM bench_latency")]
    return {"jobs": n, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat)}


async def throughput(url: str, tmp: Path, n: int, workers: int, concurrency: int) -> dict:
    q(url, "TRUNCATE procrastinate_jobs CASCADE")
    app = make_app(url)
    t0 = time.monotonic()
    async with app.open_async():
        for i in range(n):
            await defer_backup(app, noop(i))
    defer_s = time.monotonic() - t0
    q(url, "SELECT pg_stat_statements_reset()")
    sessions0 = q(url, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    procs = [
        start(tmp, f"tp-{w}", *worker_args(url, f"tp{w}", concurrency))[0] for w in range(workers)
    ]
    # One polling connection, twice a second; its statements are left out of the counts.
    poller = psycopg.connect(url, autocommit=True)

    def drained() -> bool:
        row = poller.execute(
            "SELECT count(*) /* bench */ FROM procrastinate_jobs WHERE task_name = "
            "'vigil.backup_vm' AND status = 'succeeded'"
        ).fetchone()
        return bool(row and row[0] >= n)

    try:
        wait_until(drained, 1800, "the queue to drain", every=0.5)
    finally:
        poller.close()
        for p in procs:
            stop(p)
    sessions1 = q(url, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    first, last = q(
        url,
        "SELECT min(at) FILTER (WHERE type = 'started'), max(at) FILTER (WHERE type = "
        "'succeeded') FROM procrastinate_events e JOIN procrastinate_jobs j ON j.id = e.job_id "
        "WHERE j.task_name = 'vigil.backup_vm'",
    )[0]
    span = (last - first).total_seconds()  # type: ignore[operator]
    mine = "query NOT LIKE '%%/* bench */%%' AND query NOT LIKE '%%pg_stat%%'"
    calls = q(
        url,
        f"SELECT sum(calls)::bigint FROM pg_stat_statements WHERE {mine} AND "
        "dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    top = q(
        url,
        "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM "
        f"pg_stat_statements WHERE {mine} ORDER BY calls DESC LIMIT 8",
    )
    # The 2 sessions of this script (poller, the query above) are not the workers'.
    return {
        "jobs": n,
        "workers": workers,
        "concurrency": concurrency,
        "defer_jobs_per_s": n / defer_s,
        "drain_s": span,
        "jobs_per_s": n / span,
        "statements_per_job": int(calls[0][0]) / n,  # type: ignore[call-overload]
        "sessions_per_job": (int(sessions1[0][0]) - int(sessions0[0][0]) - 2) / n,  # type: ignore[call-overload]
        "top_statements": [[int(c), s] for c, s in top],  # type: ignore[call-overload]
    }


async def housekeeping(url: str, reads: int = 20) -> dict[str, float]:
    """With the drained jobs still in the table: what one /metrics read of the cluster
    costs (observe.STATS_QUERY), then pruning them all once they are past retention."""
    finished = int(q(url, "SELECT count(*) FROM procrastinate_jobs")[0][0])  # type: ignore[call-overload]
    times = []
    async with await db.connect(url, "bench-metrics") as conn:
        for _ in range(reads):
            t = time.perf_counter()
            await read_stats(conn, host_slots=2, datastore_slots=4)
            times.append(time.perf_counter() - t)
    q(url, "UPDATE procrastinate_events SET at = at - interval '8 days'")
    app = make_app(url)
    async with app.open_async():
        t = time.perf_counter()
        deleted = await prune_jobs(app, Retention(), maintenance_queue=MAINT_QUEUE)
        prune_s = time.perf_counter() - t
    return {
        "job_rows": finished,
        "metrics_read_ms_median": statistics.median(times) * 1000,
        "metrics_read_ms_max": max(times) * 1000,
        "pruned_rows": sum(deleted.values()),
        "prune_s": prune_s,
    }


def failover(url: str, tmp: Path, rounds: int, *, freeze: bool = False) -> dict[str, object]:
    """Seconds from the leader's kill -9 (or SIGSTOP, with `freeze`) to the standby's term."""
    times = []
    tag = "z" if freeze else "f"
    for r in range(rounds):
        r_id = f"{tag}{r}"
        a, a_out = start(tmp, f"el-a{r_id}", "elector", url, f"a{r_id}", "--vcenter", f"vc-{r_id}")
        wait_until(lambda o=a_out: "LEADER" in o.read_text(), 60, "the first leader")
        b, b_out = start(tmp, f"el-b{r_id}", "elector", url, f"b{r_id}", "--vcenter", f"vc-{r_id}")
        wait_until(
            lambda r_id=r_id: q(
                url,
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s",
                (f"vigil-leader:b{r_id}",),
            ),
            60,
            "the standby",
        )
        time.sleep(1.5)
        killed = time.time()
        os.kill(a.pid, signal.SIGSTOP if freeze else signal.SIGKILL)
        if not freeze:
            a.wait()
        wait_until(lambda o=b_out: "LEADER" in o.read_text(), 60, "the standby to lead")
        m = re.search(r"LEADER (\d+) ([\d.]+)", b_out.read_text())
        assert m
        times.append(float(m.group(2)) - killed)
        if freeze:
            os.kill(a.pid, signal.SIGCONT)
            stop(a)
        stop(b)
    return {"rounds": rounds, "seconds": times, "median_s": statistics.median(times)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--latency-jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--failover-rounds", type=int, default=3)
    ap.add_argument("--parts", default="queue,failover,backups")
    ap.add_argument("--vms", type=int, default=6, help="backups: VMs per round")
    ap.add_argument("--disk-mib", type=int, default=256, help="backups: each VM's disk")
    ap.add_argument("--backup-workers", default="1,2,3", help="backups: worker counts")
    ap.add_argument("--work", default="/dev/shm/vigil-bench-cluster", help="backups: tmpfs")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    if parts & {"queue", "failover"}:
        await queue_and_failover(args, parts, results)
    if "backups" in parts:
        from cluster_backups import run_backups

        counts = [int(n) for n in args.backup_workers.split(",")]
        out = await run_backups(Path(args.work), counts, args.vms, args.disk_mib * MIB)
        (results / "cluster_backups.json").write_text(json.dumps(out, indent=2, default=str))


async def queue_and_failover(args: argparse.Namespace, parts: set[str], results: Path) -> None:
    with PostgresServer() as pg:
        url = pg.url()
        tmp = pg.base
        await prepare_database(url)
        create_test_tables(url)
        q(url, "CREATE TABLE bench_latency (job_id bigint, seconds float8)")
        q(url, "INSERT INTO vigil_cluster_epochs VALUES ('vc-1', 1, 'bench')")
        out: dict[str, object] = {"postgresql": q(url, "SHOW server_version")[0][0]}
        if "queue" in parts:
            out["latency"] = await latency(url, tmp, args.latency_jobs)
            out["throughput"] = await throughput(
                url, tmp, args.jobs, args.workers, args.concurrency
            )
            out["housekeeping"] = await housekeeping(url)
        if "failover" in parts:
            out["failover"] = failover(url, tmp, args.failover_rounds)
            out["failover_frozen"] = failover(url, tmp, args.failover_rounds, freeze=True)
    if "queue" in parts:
        lat, tp = out["latency"], out["throughput"]
        assert isinstance(lat, dict) and isinstance(tp, dict)
        print(
            f"dispatch latency (defer → start, {lat['jobs']} jobs): "
            f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms"
        )
        print(f"defer rate: {tp['defer_jobs_per_s']:.0f} jobs/s (one at a time, per-VM locks)")
        print(
            f"drain {tp['jobs']} queued no-op jobs with {tp['workers']} workers × "
            f"{tp['concurrency']}: {tp['drain_s']:.1f} s = {tp['jobs_per_s']:.0f} jobs/s"
        )
        print(
            f"PostgreSQL per job: {tp['statements_per_job']:.1f} statements, "
            f"{tp['sessions_per_job']:.2f} new sessions"
        )
        for calls, text in tp["top_statements"]:
            print(f"   {calls:>7}  {text}")
        hk = out["housekeeping"]
        assert isinstance(hk, dict)
        print(
            f"/metrics cluster read with {hk['job_rows']} job rows: median "
            f"{hk['metrics_read_ms_median']:.1f} ms, max {hk['metrics_read_ms_max']:.1f} ms; "
            f"pruning {hk['pruned_rows']} rows past retention: {hk['prune_s']:.2f} s"
        )
    if "failover" in parts:
        fo = out["failover"]
        assert isinstance(fo, dict)
        print(
            f"scheduler failover after kill -9: median {fo['median_s']:.2f} s "
            f"({', '.join(f'{s:.2f}' for s in fo['seconds'])})"
        )
        fz = out["failover_frozen"]
        assert isinstance(fz, dict)
        print(
            f"scheduler failover from a frozen (SIGSTOP) leader: median {fz['median_s']:.2f} s "
            f"({', '.join(f'{s:.2f}' for s in fz['seconds'])})"
        )
    (results / "cluster.json").write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    asyncio.run(main())
