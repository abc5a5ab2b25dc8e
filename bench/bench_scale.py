"""The daemon at 50,000 VMs (issue 18 part 2): 50 clusters x 1,000 VMs in the simulator.

    .venv/bin/python bench/bench_scale.py [--clusters 50] [--vms-per-cluster 1000]
        [--idle-seconds 60] [--reconcile-interval 120] [--status-gets 5]

1. The simulator alone (`-cluster N -host 1 -pool 0 -standalone-host 0 -vm M`): start time and
   resident memory, so a reader knows whether the machine held the whole estate.
2. `vigil watch` as a process over it, with a policy that covers no VM (the cost of
   watching, not of backing up): first sync (process start -> `daemon.inventory_ready`),
   idle CPU over a quiet minute, `/status` and `/status.json` (each GET --status-gets
   times: median seconds and bytes), the cost of one reconcile (the full re-read every
   daemon.reconcile_interval: wall from its start to `watcher.reconciled` and the CPU
   above the idle rate), and peak RSS over all of it (VmHWM).

Policy evaluation of 50,000 VMs against 200 policies is bench_policies.py's
(`--vms 50000`). Goals: peak RSS <= 1 GB, idle CPU < 2 % of a core, status <= 0.5 s.
Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protector.devtools.simulator import Simulator  # noqa: E402
from tests.daemon.helpers import policy, write_config  # noqa: E402


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Lines:
    """The daemon's JSON log lines, read in a thread; wait_for(event) -> the record."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.records: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            rec["_seen"] = time.monotonic()
            with self.cond:
                self.records.append(rec)
                self.cond.notify_all()

    def wait_for(self, event: str, after: int = 0, timeout: float = 3600) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for rec in self.records[after:]:
                    if rec.get("event") == event:
                        return rec
                if self.proc.poll() is not None:
                    raise SystemExit(f"vigil watch exited ({self.proc.returncode})")
                left = end - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"no {event} within {timeout} s")
                self.cond.wait(left)


def get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:
        body = resp.read()
    return time.perf_counter() - t, len(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--vms-per-cluster", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--reconcile-interval", type=float, default=120)
    ap.add_argument("--status-gets", type=int, default=5)
    args = ap.parse_args()
    vms = args.clusters * args.vms_per_cluster
    # Each cluster: one host, its root resource pool holding the VMs; no standalone host.
    sim_args = ["-dc", "1", "-cluster", str(args.clusters), "-host", "1", "-pool", "0"]
    sim_args += ["-standalone-host", "0", "-vm", str(args.vms_per_cluster)]
    out: dict[str, Any] = {"vms": vms, "simulator_args": sim_args}
    t0 = time.monotonic()
    sim = Simulator(args=sim_args).start(timeout=3600)  # minutes at 50,000 VMs
    try:
        assert sim.proc is not None
        out["simulator_start_s"] = round(time.monotonic() - t0, 1)
        out["simulator_rss_mb"] = round(proc_mb(sim.proc.pid, "VmRSS"), 1)
        print(
            f"simulator: {vms} VMs in {out['simulator_start_s']} s, "
            f"RSS {out['simulator_rss_mb']} MB",
            flush=True,
        )
        work = Path(tempfile.mkdtemp(prefix="vigil-bench-scale-"))
        cfg = write_config(
            work,
            sim,
            policy("none", 'names = ["no-such-vm-*"]'),
            daemon=f"reconcile_interval = {args.reconcile_interval}",
        )
        cfg.write_text(cfg.read_text().replace("tag_interval = 1", "tag_interval = 60"))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "protector.cli", "--config", str(cfg), "--log-json", "watch"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            lines = Lines(proc)
            url = lines.wait_for("daemon.started", timeout=600)["status"]
            ready = lines.wait_for("daemon.inventory_ready")
            out["first_sync_s"] = round(ready["_seen"] - started, 2)
            print(f"first sync {out['first_sync_s']} s", flush=True)
            time.sleep(5)  # the leftover-snapshot scan and the first tag poll
            cpu0, w0 = proc_cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            cpu1, w1 = proc_cpu_seconds(proc.pid), time.monotonic()
            idle_rate = (cpu1 - cpu0) / (w1 - w0)
            out["idle_cpu_pct_of_core"] = round(100 * idle_rate, 2)
            print(f"idle {out['idle_cpu_pct_of_core']} % of a core", flush=True)
            for page in ("status", "status.json"):
                samples = [get(url.rsplit("/", 1)[0] + "/" + page) for _ in range(args.status_gets)]
                out[f"{page}_s"] = round(statistics.median(s for s, _ in samples), 3)
                out[f"{page}_bytes"] = samples[0][1]
                print(f"/{page}: {out[f'{page}_s']} s, {samples[0][1]} bytes", flush=True)
            # The next reconcile: CPU and wall from the previous quiet point to its end.
            mark = len(lines.records)
            cpu_a, w_a = proc_cpu_seconds(proc.pid), time.monotonic()
            rec = lines.wait_for(
                "watcher.reconciled", after=mark, timeout=args.reconcile_interval * 3
            )
            cpu_b = proc_cpu_seconds(proc.pid)
            extra = (cpu_b - cpu_a) - idle_rate * (rec["_seen"] - w_a)
            out["reconcile_cpu_s"] = round(extra, 2)
            print(f"reconcile: {out['reconcile_cpu_s']} CPU-s above idle", flush=True)
            out["rss_peak_mb"] = round(proc_mb(proc.pid, "VmHWM"), 1)
            out["rss_now_mb"] = round(proc_mb(proc.pid, "VmRSS"), 1)
            out["simulator_rss_peak_mb"] = round(proc_mb(sim.proc.pid, "VmHWM"), 1)
        finally:
            proc.terminate()
            proc.wait(120)
    finally:
        sim.stop()
    print(json.dumps(out, indent=1))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "scale.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
