"""bench_cluster.py's backup part: aggregate backup throughput of real `vigil watch`
processes on one simulator, one repository and (for the cluster) one PostgreSQL.

Rounds, each on a fresh simulator, database and repository (all in tmpfs):

  single     one `vigil watch` without [cluster] (the in-process runner): the baseline;
  N workers  `vigil watch --role scheduler` + N × `vigil watch --role worker`.

Every round backs up the same workload: `vms` VMs whose `disk` bytes are random (no
compression, no dedup between VMs), moved into a policy's folder at once; full backups
through the `file` transport into an encrypted repository. Each backup process runs
`concurrency` backups at once (`limits.concurrent_backups`, the worker's concurrency), and
the cluster's slots never limit (host_slots, datastore_slots = 64).

  MiB/s            = vms × disk / (newest point's commit − the first move into scope)
  overhead per job = the job's run on its worker (procrastinate's `started` → `succeeded`
                     events) − the backup workflow's own span in its manifest (started_at →
                     committed_at): the epoch claim, the slots, the VM lookup by uuid, the
                     check for a newer point, recording — what the cluster adds per job
  queue wait       = `deferred` → `started`: jobs waiting for a free worker (not overhead)

On a 2-core machine more workers cannot add CPU: the point is what the machinery costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from chaos.helpers import FAST_KDF, datastore_dir, free_port, start_vigil
from pg_server import PostgresServer
from pyVmomi import vim

from protector.devtools.simtools import create_folder, create_vm, move_vm
from protector.devtools.simulator import Simulator, build
from repository import Repository
from watcher.session import Credentials, Session
from watcher.soap import Endpoint

PASSWORD_ENV = "VIGIL_BENCH_VC_PASSWORD"
PASSPHRASE_ENV = "VIGIL_BENCH_PASSPHRASE"
DB_ENV = "VIGIL_BENCH_DATABASE_URL"
PASSPHRASE = "bench-cluster"
MIB = 1024 * 1024


def node_config(
    root: Path, sim: Simulator, name: str, *, cluster: bool, concurrency: int
) -> tuple[Path, int]:
    port = free_port()
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    hh = (time.localtime().tm_hour + 12) % 24  # the daily prune stays out
    table = (
        f'[cluster]\nnode = "{name}"\ndatabase_url_env = "{DB_ENV}"\n'
        "host_slots = 64\ndatastore_slots = 64\n"
        if cluster
        else ""
    )
    cfg = d / "vigil.toml"
    cfg.write_text(
        f"""
[vcenter]
url = "{sim.url}"
user = "{sim.user}"
password_env = "{PASSWORD_ENV}"
[repository]
path = "{root / "repo"}"
passphrase_env = "{PASSPHRASE_ENV}"
[policies]
path = "{root / "policies.d"}"
[transport]
modes = ["file"]
[transport.file.datastores]
LocalDS_0 = "{datastore_dir(sim)}"
[limits]
concurrent_backups = {concurrency}
per_host = 64
per_datastore = 64
io_threads = 4
[daemon]
status_listen = "127.0.0.1:{port}"
prune_at = "{hh:02d}:00"
[state]
dir = "{d / "state"}"
{table}"""
    )
    return cfg, port


def write_policy(root: Path) -> None:
    pol = root / "policies.d"
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "bench.toml").write_text(
        '[[policy]]\nname = "bench"\npriority = 10\n[policy.select]\n'
        'folders = ["/DC0/vm/prod/**"]\n[policy.schedule]\nrpo = "24h"\n'
        "[policy.retention]\nkeep_last = 10\n"
    )


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except OSError:
        return None


async def wait(probe: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)
    return value


async def make_vms(session: Session, sim: Simulator, n: int, size: int) -> list[Any]:
    await create_folder(session, "/DC0/vm", "prod")
    await create_folder(session, "/DC0/vm", "staging")
    vms = []
    for i in range(n):
        vm = await create_vm(session, "/DC0/vm/staging", f"b-{i}", disk_kb=size // 1024)
        config = (await session.properties(vm, ["config"]))["config"]
        disk = next(d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
        rel = disk.backing.fileName.split("] ", 1)[1].replace(".vmdk", "-flat.vmdk", 1)
        with (datastore_dir(sim) / rel).open("wb") as f:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
        vms.append(vm)
    return vms


def manifests(repo: Path) -> list[Any]:
    return Repository.open(repo, passphrase=PASSPHRASE).manifests()


def job_spans(url: str) -> dict[str, dict[str, float]]:
    """VM name → its backup job's deferred/started/succeeded times (the last attempt's)."""
    with psycopg.connect(url, autocommit=True) as conn:
        got = conn.execute(
            "SELECT j.args->'payload'->>'name', e.type::text, max(extract(epoch FROM e.at)) "
            "FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id "
            "WHERE j.task_name = 'vigil.backup_vm' AND j.status = 'succeeded' "
            "GROUP BY 1, 2"
        ).fetchall()
    out: dict[str, dict[str, float]] = {}
    for name, kind, at in got:
        out.setdefault(name, {})[kind] = float(at)
    return out


async def one_round(
    pg: PostgresServer | None, work: Path, workers: int, vms: int, size: int, concurrency: int
) -> dict[str, Any]:
    label = f"{workers}-workers" if pg else "single"
    root = work / label
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    write_policy(root)
    Repository.init(root / "repo", passphrase=PASSPHRASE, kdf=FAST_KDF)
    url = pg.new_database(f"bench_{workers}") if pg else ""
    os.environ[DB_ENV] = url
    os.environ[PASSPHRASE_ENV] = PASSPHRASE
    procs = []
    (root / "sim").mkdir()
    with Simulator(binary=build(), tmpdir=str(root / "sim")) as sim:
        os.environ[PASSWORD_ENV] = sim.password
        session = await Session(Endpoint(sim.url), Credentials(sim.user, sim.password)).connect()
        try:
            machines = await make_vms(session, sim, vms, size)
            if pg is None:
                names = [("vigil", "all")]
            else:
                names = [("sched", "scheduler")] + [(f"w{i}", "worker") for i in range(workers)]
            ports = {}
            for name, role in names:
                cfg, ports[name] = node_config(
                    root, sim, name, cluster=pg is not None, concurrency=concurrency
                )
                args = ("watch",) if pg is None else ("watch", "--role", role)
                procs.append(start_vigil(cfg, *args, log=root / f"{name}.log"))
            lead = names[0][0]

            def ready() -> bool:
                for (name, _), p in zip(names, procs, strict=True):
                    if p.poll() is not None:
                        log = (root / f"{name}.log").read_text(errors="replace")[-2000:]
                        raise SystemExit(f"{name} exited with {p.returncode}:\n{log}")
                st = status(ports[lead])
                if not st or len(st.get("vms", [])) < vms:
                    return False
                if pg is None:
                    return True
                alive = [n for n in st["cluster"].get("nodes", []) if n["alive"]]
                return bool(st["cluster"]["leading"]) and len(alive) == workers + 1

            await wait(ready, 180, "the nodes to be up and the leader to see every VM")
            started = time.time()
            for vm in machines:
                await move_vm(session, vm, "/DC0/vm/prod")
            done = await wait(
                lambda: (ms := manifests(root / "repo")) and len(ms) >= vms and ms,
                1800,
                "every VM's point",
                every=1.0,
            )
        finally:
            await session.close()
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(120)
    end = max(m.committed_at.timestamp() for m in done)
    elapsed = end - started
    out: dict[str, Any] = {
        "round": label,
        "workers": workers if pg else 0,
        "vms": vms,
        "disk_mib": size // MIB,
        "concurrency_per_process": concurrency,
        "seconds": elapsed,
        "mib_s": vms * size / MIB / elapsed,
        "workflow_s_median": statistics.median(
            (m.committed_at - m.started_at).total_seconds() for m in done
        ),
        "load_average": os.getloadavg(),
    }
    if pg:
        spans = job_spans(url)
        overhead, queued = [], []
        for m in done:
            s = spans[m.vm.name]
            in_job = s["succeeded"] - s["started"]
            overhead.append(in_job - (m.committed_at - m.started_at).total_seconds())
            queued.append(s["started"] - s["deferred"])
        out |= {
            "overhead_per_job_ms_median": statistics.median(overhead) * 1000,
            "overhead_per_job_ms_max": max(overhead) * 1000,
            "queue_wait_s_median": statistics.median(queued),
            "jobs_by_worker": _jobs_by_worker(root, [n for n, _ in names[1:]]),
        }
    shutil.rmtree(root, ignore_errors=True)
    return out


def _jobs_by_worker(root: Path, workers: list[str]) -> dict[str, int]:
    """Backups each worker finished, from its JSON log (procrastinate forgets a stopped
    worker's id)."""
    out = {}
    for name in workers:
        n = 0
        for line in (root / f"{name}.log").read_text(errors="replace").splitlines():
            if '"job.finished"' in line and json.loads(line).get("outcome") == "success":
                n += 1
        out[name] = n
    return out


async def run_backups(
    work: Path, workers: list[int], vms: int, size: int, concurrency: int = 2
) -> dict[str, Any]:
    rounds = [await one_round(None, work, 1, vms, size, concurrency)]
    _print(rounds[-1])
    with PostgresServer() as pg:
        for n in workers:
            rounds.append(await one_round(pg, work, n, vms, size, concurrency))
            _print(rounds[-1])
    base = rounds[0]["mib_s"]
    for r in rounds:
        r["vs_single"] = r["mib_s"] / base
    shutil.rmtree(work, ignore_errors=True)
    return {"cpus": os.cpu_count(), "rounds": rounds}


def _print(r: dict[str, Any]) -> None:
    line = (
        f"{r['round']:>10}: {r['vms']} × {r['disk_mib']} MiB in {r['seconds']:.1f} s = "
        f"{r['mib_s']:.0f} MiB/s (workflow {r['workflow_s_median']:.2f} s/VM"
    )
    if "overhead_per_job_ms_median" in r:
        line += (
            f", cluster overhead {r['overhead_per_job_ms_median']:.0f} ms/job median, "
            f"max {r['overhead_per_job_ms_max']:.0f}; queue wait {r['queue_wait_s_median']:.1f} s"
            f"; jobs by worker {r['jobs_by_worker']}"
        )
    la = r["load_average"]
    print(line + f"; load {la[0]:.1f})", flush=True)
