"""The status page at scale: the time to answer /status (HTML) and /status.json (one page of
VMs, problems first) and /status.json?per_page=all with N VMs, over HTTP from a StatusServer
on loopback. Each request runs what the daemon's does: every VM's light row from a planner and
job runner holding N VMs under three policies (views.vm_rows), the counts, paging, then the
full rows of the page only (views.complete: why each VM waits, via the planner's reasoning).
`all_full_rows_s` is every VM's full row (what each request built before it paged, until
2026-12-07). Writes bench/results/status.json. A timing goal, not a test: at most 0.5 s at
50,000 VMs (issue 18). The whole daemon at 50,000 VMs is bench_scale.py's.

    .venv/bin/python bench/bench_status.py [--vms 1000 10000 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from policies.reload import PolicyStore
from protector.daemon.jobs import JobRunner, Limits
from protector.daemon.metrics import Metrics
from protector.daemon.planner import Planner
from protector.daemon.state import VmState
from protector.daemon.status_server import StatusServer
from protector.daemon.views import complete, state_counts, vm_rows, vm_status

ROOT = Path(__file__).resolve().parents[1]


def estate(n: int, tmp: Path) -> tuple[list[Any], Planner, JobRunner]:
    """N VMs under three policies (one with a closed backup window), most with restore
    points of various ages, some never backed up, some in conflict: a planner and job
    runner as the daemon holds them."""
    (tmp / "p.toml").write_text(
        "".join(
            f'[[policy]]\nname = "p{k}"\npriority = {k}\n[policy.select]\nnames = ["*-{k}*"]\n'
            f'[policy.schedule]\nrpo = "24h"\n{window}[policy.retention]\nkeep_last = 3\n'
            for k, window in ((0, 'window = "03:00-03:30"\n'), (1, ""), (2, ""))
        )
    )
    plan = Planner({}, None, UTC)
    plan.policies = PolicyStore(tmp)

    async def run(_req: Any, _rec: Any) -> None:
        return None

    plan.jobs = runner = JobRunner(run, Limits())
    nodes = []
    now = datetime.now(UTC)
    for i in range(n):
        key = f"vc/{i}"
        nodes.append(
            SimpleNamespace(
                identity=key, path=f"/DC0/vm/team-{i % 50}/vm-{i}", name=f"vm-{i}", moref=f"vm-{i}"
            )
        )
        plan.winners[key] = None if i % 10 == 0 else f"p{i % 3}"
        if i % 4:
            st = VmState(now - timedelta(hours=i % 30), f"p-{i}", 3)
            if i % 101 == 0:
                st.last_error = "datastore unreachable"
            plan.state[key] = st
        if i % 500 == 0:
            plan.conflicts[key] = ("p1", "p2")
    return nodes, plan, runner


def status_view(nodes: list[Any], plan: Planner, runner: JobRunner) -> dict[str, Any]:
    """What Daemon.status_view builds per request (the VMs' light rows, counts), with the
    other parts as an idle daemon has them."""
    vms = vm_rows(nodes, plan, runner)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "vcenter": "https://vc.example.com/sdk",
        "healthy": True,
        "counts": state_counts(vms),
        "breached": sum(1 for v in vms if v["breached"]),
        "vms": vms,
        "jobs": {"running": [], "queued": [], "recent": [], "outcomes": {}, "coalesced": 0},
        "gone": [],
        "repository": {"points": len(nodes) * 3},
        "prune": None,
        "dispatch_paused": None,
        "errors": [],
        "policy_errors": [],
    }


async def measure(n: int, tmp: Path) -> dict[str, Any]:
    nodes, plan, runner = estate(n, tmp)
    srv = StatusServer(
        lambda: status_view(nodes, plan, runner),
        lambda: True,
        Metrics(),
        complete=lambda rows: complete(rows, plan, runner),
    )
    await srv.start("127.0.0.1:0")
    row: dict[str, Any] = {"vms": n}
    try:
        async with aiohttp.ClientSession() as http:
            for name, path in (
                ("html_s", "/status"),
                ("html_filtered_s", "/status?state=problems&q=team-7&page=2"),
                ("json_s", "/status.json"),
                ("json_all_s", "/status.json?per_page=all"),
            ):
                times, size = [], 0
                for _ in range(5):
                    start = time.perf_counter()
                    async with http.get(f"http://127.0.0.1:{srv.port}{path}") as r:
                        body = await r.read()
                        assert r.status == 200
                    times.append(time.perf_counter() - start)
                    size = len(body)
                row[name] = round(statistics.median(times), 3)
                row[name.replace("_s", "_kb")] = round(size / 1e3, 1)
    finally:
        await srv.stop()
    # Every VM's full row (what each request built before paging, until 2026-12-07).
    times = []
    for _ in range(3):
        start = time.perf_counter()
        vm_status(nodes, plan, runner)
        times.append(time.perf_counter() - start)
    row["all_full_rows_s"] = round(statistics.median(times), 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [asyncio.run(measure(n, Path(tmp))) for n in args.vms]
    for row in rows:
        print(row)
    out = ROOT / "bench" / "results" / "status.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
