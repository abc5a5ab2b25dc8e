"""Daemon benchmarks (issue 8).

1. Event to job start: VMs moved one by one into a protected folder; the time from the
   MoveIntoFolder task completing to the daemon starting the VM's backup job (p50, p99).
2. Idle cost: `vigil watch` as a process over a 10,000-VM simulator inventory that no
   policy covers: CPU share of one core over a quiet minute, and peak RSS.

    .venv/bin/python bench/bench_daemon.py [--moves 30] [--vms 10000] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protector.config import load_config  # noqa: E402
from protector.daemon.daemon import Daemon  # noqa: E402
from protector.devtools.simtools import create_folder, create_vm, move_vm  # noqa: E402
from protector.devtools.simulator import Simulator  # noqa: E402
from tests.daemon.helpers import policy, session_for, write_config  # noqa: E402


async def latency(moves: int) -> dict[str, float]:
    with Simulator() as sim:
        work = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
        s = await session_for(sim)
        await create_folder(s, "/DC0/vm", "protected")
        await create_folder(s, "/DC0/vm", "staging")
        vms = [await create_vm(s, "/DC0/vm/staging", f"bench-{i}") for i in range(moves)]
        cfg = load_config(write_config(work, sim, policy("p", 'folders = ["/DC0/vm/protected"]')))
        daemon = Daemon(cfg)
        task = asyncio.create_task(daemon.run(install_signals=False))
        await asyncio.wait_for(daemon.ready.wait(), 60)
        assert daemon.runner is not None
        samples = []
        for i, vm in enumerate(vms):
            await move_vm(s, vm, "/DC0/vm/protected")
            moved = time.time()
            name = f"bench-{i}"
            while True:
                started = [
                    r.started for _, r, _ in daemon.runner.running.values() if r.vm_name == name
                ]
                started += [r.started for r in daemon.runner.history if r.vm_name == name]
                if started:
                    samples.append(max(0.0, min(started) - moved))
                    break
                await asyncio.sleep(0.005)
        daemon.request_stop()
        await asyncio.wait_for(task, 60)
        await s.close()
    samples.sort()
    return {
        "moves": moves,
        "p50_s": statistics.median(samples),
        "p99_s": samples[min(len(samples) - 1, int(0.99 * len(samples)))],
        "max_s": samples[-1],
    }


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def proc_rss_mb(pid: int, key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle(vms: int, seconds: float) -> dict[str, float]:
    # 10 datacenters x 10 clusters x VMs: govmomi's simulator slows down with the square of
    # the VMs per pool, so the inventory is spread as a large vCenter's would be.
    per_pool = max(1, vms // 100)
    args = ["-dc", "10", "-cluster", "10", "-host", "1", "-pool", "0", "-standalone-host", "0"]
    with Simulator(args=[*args, "-vm", str(per_pool)]) as sim:
        work = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
        cfg = write_config(
            work,
            sim,
            policy("none", 'names = ["no-such-vm-*"]'),
            daemon="reconcile_interval = 600",
        )
        text = cfg.read_text().replace("tag_interval = 1", "tag_interval = 60")
        cfg.write_text(text)
        env = dict(os.environ)
        proc = subprocess.Popen(
            [sys.executable, "-m", "protector.cli", "--config", str(cfg), "--log-json", "watch"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        t0 = time.monotonic()
        assert proc.stdout is not None
        for line in proc.stdout:
            if "daemon.inventory_ready" in line:
                break
        sync_s = time.monotonic() - t0
        time.sleep(2)  # let the leftover-snapshot scan finish
        cpu0, w0 = proc_cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, w1 = proc_cpu_seconds(proc.pid), time.monotonic()
        rss_peak = proc_rss_mb(proc.pid, "VmHWM")
        rss_now = proc_rss_mb(proc.pid, "VmRSS")
        proc.terminate()
        proc.wait(60)
    return {
        "vms": per_pool * 100,
        "startup_sync_s": round(sync_s, 2),
        "idle_cpu_pct_of_core": round(100 * (cpu1 - cpu0) / (w1 - w0), 2),
        "rss_peak_mb": round(rss_peak, 1),
        "rss_idle_mb": round(rss_now, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--moves", type=int, default=30)
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--skip-idle", action="store_true")
    args = ap.parse_args()
    lat = asyncio.run(latency(args.moves))
    print(
        f"event -> job start over {lat['moves']} moves: p50 {lat['p50_s']:.3f} s, "
        f"p99 {lat['p99_s']:.3f} s (target p50 <= 1 s)"
    )
    out: dict[str, object] = {"latency": lat}
    if not args.skip_idle:
        res = idle(args.vms, args.idle_seconds)
        print(
            f"idle daemon over {res['vms']} VMs: {res['idle_cpu_pct_of_core']} % of a core, "
            f"peak RSS {res['rss_peak_mb']} MB (targets < 2 %, < 300 MB); first sync "
            f"{res['startup_sync_s']} s"
        )
        out["idle"] = res
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "daemon.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
