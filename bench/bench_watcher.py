"""Watcher benchmark: a complete inventory tree from a simulator with N VMs.

    .venv/bin/python bench/bench_watcher.py [--vms 10000] [--changes 50]

Measured in one run, same filter and property set everywhere (watcher.traversal):
 (a) raw download of the initial WaitForUpdatesEx response (bytes only, no parsing);
 (b) stock pyvmomi, synchronous: WaitForUpdatesEx with its objects built (subprocess);
 (c) our watcher from start (connect, login, collector, filter) to a complete tree;
 (d) our peak RSS (this process; (a) runs after (c) and (b) in a subprocess, so the
     peak is the watcher's plus the interpreter and imports, reported separately);
 (e) latency from issuing a Rename_Task / CreateVM_Task to our event, p50 and p99.
     Measured from the *call*, so it includes the task itself and the simulator's
     250 ms update-batching tick: an upper bound of "task completed -> event".
     govmomi 0.24's simulator re-collects the whole filter once per queued object
     update (a Rename_Task queues ~5: task enter, task state changes, the VM), so at
     10,000 VMs its own delay dominates; (e') repeats (e) on a 100-VM simulator in
     the same run to show the watcher's share.
Targets (issue 3): (c) <= 3 x (a) and <= (b) / 5; (d) <= 200 MB; (e) p50 <= 0.5 s.
The simulator runs with its datastores on /dev/shm. Writes bench/results/watcher.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyVmomi import vim, vmodl  # noqa: E402

from protector.devtools.simulator import Simulator  # noqa: E402
from watcher.events import VmAdded, VmRenamed  # noqa: E402
from watcher.session import Credentials, Session  # noqa: E402
from watcher.soap import Endpoint, method_info  # noqa: E402
from watcher.tasks import wait_for_task  # noqa: E402
from watcher.traversal import inventory_filter_spec  # noqa: E402
from watcher.updates import Watcher  # noqa: E402

# The simulator's cost grows with the square of VMs per resource pool (10,000 VMs in
# 5 pools: 29 s for the initial update set; in 100 pools: ~1.5 s), so the model spreads
# them like a real estate: 10 datacenters x 10 clusters x N/100 VMs.
DATACENTERS = 10
CLUSTERS = 10


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure_watcher(sim: Simulator, changes: int) -> dict[str, float]:
    creds = Credentials(sim.user, sim.password)

    async def connect() -> Session:
        return await Session(Endpoint(sim.url), creds).connect()

    before = rss_mb()
    start = time.perf_counter()
    w = Watcher(connect, tag_interval=0, reconcile_interval=0, max_wait_seconds=30)
    run = asyncio.create_task(w.run())
    await w.ready.wait()
    elapsed = time.perf_counter() - start
    vm_count = len(w.tree)
    peak = rss_mb()

    seen: dict[str, float] = {}
    waiting: dict[str, asyncio.Event] = {}

    async def consume() -> None:
        async for ev in w.events():
            if isinstance(ev, VmRenamed | VmAdded):
                seen[ev.vm.name] = time.perf_counter()
                if ev.vm.name in waiting:
                    waiting[ev.vm.name].set()

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    latencies: list[float] = []
    after_done: list[float] = []  # observed task completion -> event (can be < 0)
    async with Session(Endpoint(sim.url), creds) as s:
        vms = w.tree.vms()
        for i in range(changes):
            name = f"bench-{i}"
            waiting[name] = asyncio.Event()
            t0 = time.perf_counter()
            if i % 5 == 4:
                like = w.tree._objs[vms[i].moref].props
                pool = like["resourcePool"]
                folder = s.moref("Folder", like["parent"].value)
                spec = vim.vm.ConfigSpec(
                    name=name, guestId="otherGuest", files=vim.vm.FileInfo(vmPathName="[LocalDS_0]")
                )
                task = await s.call(
                    folder, "CreateVM_Task", config=spec, pool=s.moref(pool.type, pool.value)
                )
            else:
                vm = s.moref("VirtualMachine", vms[i].moref)
                task = await s.call(vm, "Rename_Task", newName=name)
            await wait_for_task(s, task)
            done = time.perf_counter()
            await asyncio.wait_for(waiting[name].wait(), 300)
            latencies.append(seen[name] - t0)
            after_done.append(seen[name] - done)
    await w.close()
    await run
    consumer.cancel()
    latencies.sort()
    return {
        "vms": vm_count,
        "c_watcher_s": elapsed,
        "d_rss_before_mb": before,
        "d_peak_rss_mb": max(peak, rss_mb()),
        "e_p50_s": statistics.median(latencies),
        "e_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "e_after_done_p50_s": statistics.median(after_done),
    }


async def measure_raw(sim: Simulator) -> dict[str, float]:
    async with Session(Endpoint(sim.url), Credentials(sim.user, sim.password)) as s:
        pc = s.client.bind(await s.call(s.content.propertyCollector, "CreatePropertyCollector"))
        await s.call(
            pc,
            "CreateFilter",
            spec=inventory_filter_spec(s.content.rootFolder),
            partialUpdates=False,
        )
        info = method_info(type(pc), "WaitForUpdatesEx")
        opts = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0)
        body = s.client.stub.SerializeRequest(pc, info, ["", opts])
        start = time.perf_counter()
        async with s.client.http.post(
            s.client.endpoint.sdk_url, data=body, headers=s.client._headers()
        ) as resp:
            data = await resp.read()
        elapsed = time.perf_counter() - start
        await s.call(pc, "DestroyPropertyCollector")
    return {"a_raw_s": elapsed, "a_bytes": len(data)}


def pyvmomi_child(url: str, user: str, password: str) -> None:
    """(b), in its own process: stock pyvmomi, blocking."""
    from urllib.parse import urlsplit

    from pyVim.connect import Disconnect, SmartConnect

    parts = urlsplit(url)
    si = SmartConnect(
        protocol=parts.scheme, host=parts.hostname, port=parts.port, user=user, pwd=password
    )
    content = si.RetrieveContent()
    pc = content.propertyCollector.CreatePropertyCollector()
    pc.CreateFilter(inventory_filter_spec(content.rootFolder), partialUpdates=False)
    start = time.perf_counter()
    result = pc.WaitForUpdatesEx("", vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0))
    elapsed = time.perf_counter() - start
    objects = sum(len(f.objectSet) for f in result.filterSet)
    pc.DestroyPropertyCollector()
    Disconnect(si)
    print(json.dumps({"b_pyvmomi_s": elapsed, "b_objects": objects, "b_rss_mb": rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--pyvmomi-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pyvmomi_child:
        pyvmomi_child(*args.pyvmomi_child)
        return
    per = max(1, args.vms // (CLUSTERS * DATACENTERS))
    sim_args = ["-dc", str(DATACENTERS), "-cluster", str(CLUSTERS), "-pool", "0", "-host", "1"]
    sim_args += ["-vm", str(per)]
    sim_args += ["-standalone-host", "0"]
    t0 = time.perf_counter()
    with Simulator(args=sim_args) as sim:
        print(f"simulator {' '.join(sim_args)} up in {time.perf_counter() - t0:.1f} s", flush=True)
        results: dict[str, float] = {}
        # The simulator's first full collect is slower (its heap grows): warm it up once
        # so (a), (b) and (c) all meet the same warm simulator.
        results["warmup_raw_s"] = asyncio.run(measure_raw(sim))["a_raw_s"]
        results.update(asyncio.run(measure_watcher(sim, args.changes)))
        print(f"(c) watcher start -> complete tree: {results['c_watcher_s']:.2f} s", flush=True)
        raw = [asyncio.run(measure_raw(sim)) for _ in range(2)]
        results.update(min(raw, key=lambda r: r["a_raw_s"]))
        print(f"(a) raw download: {results['a_raw_s']:.2f} s", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--pyvmomi-child", sim.url, sim.user, sim.password],
            capture_output=True,
            text=True,
            check=True,
        )
        results.update(json.loads(child.stdout.strip().splitlines()[-1]))
    small_args = ["-cluster", "1", "-pool", "0", "-host", "1", "-vm", "100"]
    with Simulator(args=[*small_args, "-standalone-host", "0"]) as small:
        small_run = asyncio.run(measure_watcher(small, args.changes))
    results["e_small_p50_s"] = small_run["e_p50_s"]
    results["e_small_p99_s"] = small_run["e_p99_s"]
    a, b, c = results["a_raw_s"], results["b_pyvmomi_s"], results["c_watcher_s"]
    results["c_over_a"] = c / a
    results["b_over_c"] = b / c
    print(f"VMs                                   {results['vms']:>10.0f}")
    print(
        f"(a) raw download                      {a:>10.2f} s  ({results['a_bytes'] / 1e6:.1f} MB)"
    )
    print(f"(b) stock pyvmomi WaitForUpdatesEx    {b:>10.2f} s")
    print(
        f"(c) watcher start -> complete tree    {c:>10.2f} s  = {c / a:.2f} x (a), (b)/{b / c:.1f}"
    )
    print(
        f"(d) peak RSS                          {results['d_peak_rss_mb']:>10.1f} MB"
        f"  (before the watcher: {results['d_rss_before_mb']:.1f} MB)"
    )
    print(
        f"(e) change -> event latency           p50 {results['e_p50_s']:.3f} s, "
        f"p99 {results['e_p99_s']:.3f} s over {args.changes} changes "
        f"(p50 after the task was seen done: {results['e_after_done_p50_s']:.3f} s)"
    )
    print(
        f"(e') same on a 100-VM simulator          p50 {results['e_small_p50_s']:.3f} s, "
        f"p99 {results['e_small_p99_s']:.3f} s"
    )
    out = ROOT / "bench" / "results" / "watcher.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.now(UTC).isoformat(), "sim_args": sim_args, **results}
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
