"""The daemon's /metrics at scale: the time to render a scrape (on the event loop) and its
size with N VMs' per-VM series; writes bench/results/metrics.json. A timing goal, not a test:
under 1 s and a few MB at 10,000 VMs.

    .venv/bin/python bench/bench_metrics.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from prometheus_client import generate_latest

from protector.daemon.metrics import VM_STATES, Metrics

ROOT = Path(__file__).resolve().parents[1]


def vms(n: int) -> list[dict[str, object]]:
    return [
        {
            "path": f"/DC0/vm/prod/team-{i % 50}/vm-{i}",
            "policy": None if i % 10 == 0 else f"policy-{i % 7}",
            "newest_point_at": None if i % 10 == 0 else "2026-12-01T00:00:00+00:00",
            "rpo_seconds": None if i % 10 == 0 else 86400.0,
            "state": VM_STATES[i % len(VM_STATES)],
        }
        for i in range(n)
    ]


def main() -> None:
    rows = []
    print(f"{'VMs':>7} {'scrape s (median of 5)':>24} {'MB':>6} {'series':>8}")
    for n in (100, 1_000, 10_000):
        m = Metrics()
        m.set_vms(vms(n))
        times, body = [], b""
        for _ in range(5):
            start = time.perf_counter()
            body = generate_latest(m.registry)
            times.append(time.perf_counter() - start)
        series = sum(1 for line in body.splitlines() if line.startswith(b"vigil_vm_"))
        row = {
            "vms": n,
            "scrape_s": round(statistics.median(times), 3),
            "mb": round(len(body) / 1e6, 2),
            "per_vm_series": series,
        }
        rows.append(row)
        print(f"{n:>7} {row['scrape_s']:>24} {row['mb']:>6} {series:>8}")
    out = ROOT / "bench" / "results" / "metrics.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
