"""The daemon's /metrics at scale: the time to render a scrape (on the event loop:
Metrics.exposition, what /metrics serves) and its size with N VMs' per-VM series, beside the
same series rendered by prometheus_client's collector and generate_latest (how vigil did it
until 2026-12-07), in the same run; writes bench/results/metrics.json. A timing goal, not a
test: under 1 s and a few MB at 10,000 VMs; well under that at 50,000.

    .venv/bin/python bench/bench_metrics.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from protector.daemon.metrics import VM_STATES, ClientRendered, Metrics

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


def timed(fn: Any) -> tuple[float, bytes]:
    times, body = [], b""
    for _ in range(5):
        start = time.perf_counter()
        body = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), body


def main() -> None:
    rows = []
    print(f"{'VMs':>7} {'scrape s':>9} {'prometheus_client s':>20} {'MB':>6} {'series':>8}")
    for n in (100, 1_000, 10_000, 50_000):
        m = Metrics()
        data = vms(n)
        m.set_vms(data)
        scrape_s, body = timed(m.exposition)
        reg = CollectorRegistry()
        reg.register(ClientRendered(data))
        client_s, _ = timed(lambda reg=reg: generate_latest(reg))  # type: ignore[misc]
        series = sum(1 for line in body.splitlines() if line.startswith(b"vigil_vm_"))
        row = {
            "vms": n,
            "scrape_s": round(scrape_s, 3),
            "prometheus_client_per_vm_s": round(client_s, 3),
            "mb": round(len(body) / 1e6, 2),
            "per_vm_series": series,
        }
        rows.append(row)
        print(
            f"{n:>7} {row['scrape_s']:>9} {row['prometheus_client_per_vm_s']:>20} "
            f"{row['mb']:>6} {series:>8}"
        )
    out = ROOT / "bench" / "results" / "metrics.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
