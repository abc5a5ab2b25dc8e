"""Watcher benchmark at issue 18's topology: the inventory through a ContainerView.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_watcher.py [--vms 10000] [--repeat 3]
        [--changes 20] [--before-rev 819a8fa --before-changes 3] [--traversal-repeat 1]

The simulator runs 10 clusters of one host each and no standalone host, all VMs in the
clusters' root pools (`-cluster 10 -host 1 -standalone-host 0 -pool 0 -vm VMS/10`, our
vcsim's names for govc vcsim's `-cluster 10 -cluster-host 1 -host 0 -vm 1000`), its
datastores on /dev/shm. Measured in one run against the same warm simulator, each
`--repeat` times, interleaved, medians reported:

 (a) `vigil inventory --json`, whole process (interpreter start to exit, output read);
 (b) the baseline: stock pyVmomi, whole process, a lean read of the VMs (the same VM
     properties) through a ContainerView of VirtualMachine, printed as JSON;
 (a') the start-up floor of (a): a process that only imports protector.cli, and the
     read itself in this process (read_inventory_with_tags: view, tree, tags);
 (c) in this process: RetrievePropertiesEx + parse of the whole inventory through the
     view filter (watcher.traversal) and through the seed's traversal specs;
 (d) the watcher in a fresh process, start (login, collector, view, filter) to its
     first complete tree, and its peak RSS;
 (e) change -> event: Rename_Task issued -> VmRenamed seen, p50/p99 over `--changes`
     renames (includes the task and the simulator's own delay: its 250 ms batching tick
     and one re-collect of the whole filter per queued update); (e0) the simulator alone:
     stock pyVmomi with the same view filter, Rename_Task issued -> the update received.
With `--before-rev REV`, (a) and (d)/(e) also run the code of git revision REV (the seed's
traversal filter before this change; `--before-changes` renames, they take ~45 s each
at 10,000 VMs). Goals (issue 18, 10,000 VMs): (a) <= 0.8 x (b); (d) <= 1.0 x (b);
(e) p50 <= 1.5 s. Writes bench/results/watcher.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = 10
# The VM properties of watcher.traversal.VM_PROPS, spelled out so the pyVmomi baseline
# child needs nothing of vigil.
VM_PROPS = [
    "name",
    "parent",
    "parentVApp",
    "resourcePool",
    "runtime.powerState",
    "runtime.host",
    "config.instanceUuid",
    "config.uuid",
    "config.template",
    "config.guestId",
    "config.annotation",
    "config.changeTrackingEnabled",
    "capability.changeTrackingSupported",
    "datastore",
    "customValue",
]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children (each its own process) -------------------------------------------------


def child_pyvmomi(url: str, user: str, password: str) -> None:
    """(b): stock pyVmomi, blocking; lean VM set through a ContainerView, as JSON."""
    from urllib.parse import urlsplit

    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim, vmodl

    pc_ = vmodl.query.PropertyCollector
    parts = urlsplit(url)
    si = SmartConnect(
        protocol=parts.scheme, host=parts.hostname, port=parts.port, user=user, pwd=password
    )
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    spec = pc_.FilterSpec(
        objectSet=[
            pc_.ObjectSpec(
                obj=view,
                skip=True,
                selectSet=[pc_.TraversalSpec(type=vim.view.ContainerView, path="view")],
            )
        ],
        propSet=[pc_.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPS)],
    )
    pc = content.propertyCollector
    result = pc.RetrievePropertiesEx([spec], pc_.RetrieveOptions(maxObjects=1000))
    vms = []
    while result is not None:
        for oc in result.objects:
            props = {p.name: p.val for p in oc.propSet}
            vms.append(
                {
                    "moref": oc.obj._moId,
                    "name": props.get("name"),
                    "power_state": props.get("runtime.powerState"),
                    "instance_uuid": props.get("config.instanceUuid"),
                }
            )
        result = pc.ContinueRetrievePropertiesEx(result.token) if result.token else None
    view.DestroyView()
    Disconnect(si)
    print(json.dumps(vms))


def child_rawwait(url: str, user: str, password: str, changes: int) -> None:
    """(e0): the simulator alone. Stock pyVmomi, the same view filter (VM properties
    only), Rename_Task then WaitForUpdatesEx until the new name arrives."""
    from urllib.parse import urlsplit

    from pyVim.connect import Disconnect, SmartConnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim, vmodl

    pc_ = vmodl.query.PropertyCollector
    parts = urlsplit(url)
    si = SmartConnect(
        protocol=parts.scheme, host=parts.hostname, port=parts.port, user=user, pwd=password
    )
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    pc = content.propertyCollector.CreatePropertyCollector()
    pc.CreateFilter(
        pc_.FilterSpec(
            objectSet=[
                pc_.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[pc_.TraversalSpec(type=vim.view.ContainerView, path="view")],
                )
            ],
            propSet=[pc_.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPS)],
        ),
        partialUpdates=False,
    )
    result = pc.WaitForUpdatesEx("", pc_.WaitOptions(maxWaitSeconds=0))
    version = result.version
    vms = sorted((o.obj for f in result.filterSet for o in f.objectSet), key=lambda v: v._moId)
    latencies: list[float] = []
    for i in range(changes):
        name = f"raw-{os.getpid()}-{i}"
        t0 = time.perf_counter()
        WaitForTask(vms[(i * 7 + 3) % len(vms)].Rename_Task(name))
        found = False
        while not found:
            result = pc.WaitForUpdatesEx(version, pc_.WaitOptions(maxWaitSeconds=60))
            if result is None:
                continue
            version = result.version
            found = any(
                c.name == "name" and c.val == name
                for f in result.filterSet
                for o in f.objectSet
                for c in o.changeSet or []
            )
        latencies.append(time.perf_counter() - t0)
    pc.DestroyPropertyCollector()
    view.DestroyView()
    Disconnect(si)
    print(json.dumps({"raw_change_p50_s": statistics.median(latencies)}))


async def child_watch(url: str, user: str, password: str, changes: int) -> None:
    """(d) and (e) with whatever `watcher` is on the path (this tree or --before-rev)."""
    from watcher.events import VmRenamed
    from watcher.session import Credentials, Session
    from watcher.soap import Endpoint
    from watcher.tasks import wait_for_task
    from watcher.updates import Watcher

    creds = Credentials(user, password)

    async def connect() -> Session:
        return await Session(Endpoint(url), creds).connect()

    start = time.perf_counter()
    w = Watcher(connect, tag_interval=0, reconcile_interval=0, max_wait_seconds=30)
    run = asyncio.create_task(w.run())
    await w.ready.wait()
    first_tree = time.perf_counter() - start
    vm_count = len(w.tree)
    seen: dict[str, float] = {}
    waiting: dict[str, asyncio.Event] = {}

    async def consume() -> None:
        async for ev in w.events():
            if isinstance(ev, VmRenamed):
                seen[ev.vm.name] = time.perf_counter()
                if ev.vm.name in waiting:
                    waiting[ev.vm.name].set()

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    latencies: list[float] = []
    after_done: list[float] = []
    async with Session(Endpoint(url), creds) as s:
        vms = sorted(w.tree.vms(), key=lambda v: v.moref)
        for i in range(changes):
            name = f"bench-{os.getpid()}-{i}"
            waiting[name] = asyncio.Event()
            t0 = time.perf_counter()
            vm = s.moref("VirtualMachine", vms[i * 7 % len(vms)].moref)
            await wait_for_task(s, await s.call(vm, "Rename_Task", newName=name))
            done = time.perf_counter()
            await asyncio.wait_for(waiting[name].wait(), 600)
            latencies.append(seen[name] - t0)
            after_done.append(seen[name] - done)
    await w.close()
    await run
    consumer.cancel()
    latencies.sort()
    print(
        json.dumps(
            {
                "vms": vm_count,
                "first_tree_s": first_tree,
                "peak_rss_mb": rss_mb(),
                "change_p50_s": statistics.median(latencies) if latencies else None,
                "change_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                if latencies
                else None,
                "change_after_done_p50_s": statistics.median(after_done) if after_done else None,
                "changes": len(latencies),
            }
        )
    )


# -- the parent ------------------------------------------------------------------------


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}... exit {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def env_for(code: Path, password: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(code), VIGIL_VCENTER_PASSWORD=password)


def write_config(tmp: Path, url: str) -> Path:
    (tmp / "pol").mkdir()
    (tmp / "pol" / "all.toml").write_text(
        '[[policy]]\nname = "all"\npriority = 1\n[policy.select]\nfolders = ["/**"]\n'
        '[policy.schedule]\nrpo = "24h"\n[policy.retention]\nkeep_last = 3\n'
    )
    cfg = tmp / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{url}"\nuser = "user"\npassword_env = "VIGIL_VCENTER_PASSWORD"\n'
        f'[repository]\npath = "{tmp / "repo"}"\n[policies]\npath = "{tmp / "pol"}"\n'
        '[transport]\nmodes = ["http"]\n'
    )
    return cfg


def vigil_inventory(code: Path, cfg: Path, password: str) -> tuple[float, int]:
    cmd = [
        sys.executable,
        "-c",
        "import sys; from protector.cli import main; sys.exit(main())",
        "--config",
        str(cfg),
        "inventory",
        "--json",
    ]
    elapsed, out = run_timed(cmd, env_for(code, password))
    return elapsed, len(json.loads(out))


def pyvmomi_read(sim: object, password: str) -> tuple[float, int]:
    cmd = [sys.executable, __file__, "--child-pyvmomi", sim.url, sim.user, password]  # type: ignore[attr-defined]
    elapsed, out = run_timed(cmd, env_for(ROOT, password))
    return elapsed, len(json.loads(out))


def watch(code: Path, sim: object, changes: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child-watch", sim.url, sim.user, sim.password]  # type: ignore[attr-defined]
    cmd += ["--changes", str(changes)]
    _, out = run_timed(cmd, env_for(code, sim.password))  # type: ignore[attr-defined]
    return json.loads(out.strip().splitlines()[-1])


def import_floor(code: Path, password: str) -> float:
    """A process that only imports the CLI: the start-up part of (a)."""
    cmd = [sys.executable, "-c", "import protector.cli"]
    return run_timed(cmd, env_for(code, password))[0]


async def in_process_reads(sim: object, repeat: int, traversal_repeat: int) -> dict[str, float]:
    from watcher.inventory import read_inventory_with_tags
    from watcher.rawcall import retrieve_parsed
    from watcher.session import Credentials, Session
    from watcher.soap import Endpoint
    from watcher.traversal import inventory_filter_spec, inventory_view, traversal_filter_spec

    creds = Credentials(sim.user, sim.password)  # type: ignore[attr-defined]
    view_s: list[float] = []
    trav_s: list[float] = []
    inv_s: list[float] = []
    async with Session(Endpoint(sim.url), creds) as s:  # type: ignore[attr-defined]
        pc, root = s.content.propertyCollector, s.content.rootFolder
        for _ in range(repeat):
            t0 = time.perf_counter()
            await read_inventory_with_tags(s, required=False)
            inv_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            async with inventory_view(s) as view:
                got = await retrieve_parsed(s, pc, [inventory_filter_spec(root, view)])
            view_s.append(time.perf_counter() - t0)
            n_view = len(got.objects)
            if len(trav_s) < traversal_repeat:
                t0 = time.perf_counter()
                got = await retrieve_parsed(s, pc, [traversal_filter_spec(root)])
                trav_s.append(time.perf_counter() - t0)
                assert len(got.objects) <= n_view, (len(got.objects), n_view)
    return {
        "c_inventory_with_tags_s": statistics.median(inv_s),
        "c_view_read_s": statistics.median(view_s),
        "c_traversal_read_s": statistics.median(trav_s),
        "c_objects": n_view,
    }


def extract_rev(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--before-rev", default="")
    ap.add_argument("--before-changes", type=int, default=3)
    ap.add_argument("--traversal-repeat", type=int, default=1, help="(c)'s slow half")
    ap.add_argument("--child-pyvmomi", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--child-watch", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--child-rawwait", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_pyvmomi:
        child_pyvmomi(*args.child_pyvmomi)
        return
    if args.child_rawwait:
        child_rawwait(*args.child_rawwait, args.changes)
        return
    if args.child_watch:
        asyncio.run(child_watch(*args.child_watch, args.changes))
        return
    sys.path.insert(0, str(ROOT))
    from protector.devtools.simulator import Simulator

    per = max(1, args.vms // CLUSTERS)
    sim_args = ["-cluster", str(CLUSTERS), "-host", "1", "-standalone-host", "0"]
    sim_args += ["-pool", "0", "-vm", str(per)]
    results: dict[str, object] = {"sim_args": sim_args}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp_name:
        tmp = Path(tmp_name)
        before = None
        if args.before_rev:
            (tmp / "before").mkdir()
            before = extract_rev(args.before_rev, tmp / "before")
        t0 = time.perf_counter()
        with Simulator(args=sim_args) as sim:
            results["sim_start_s"] = time.perf_counter() - t0
            print(f"simulator {' '.join(sim_args)} up in {results['sim_start_s']:.1f} s")
            cfg = write_config(tmp, sim.url)
            pyvmomi_read(sim, sim.password)  # warm the simulator's heap
            a: list[float] = []
            b: list[float] = []
            a_before: list[float] = []
            for rep in range(args.repeat):
                tb, nb = pyvmomi_read(sim, sim.password)
                ta, na = vigil_inventory(ROOT, cfg, sim.password)
                b.append(tb)
                a.append(ta)
                line = f"rep {rep}: pyvmomi {tb:.2f} s ({nb} VMs), vigil inventory {ta:.2f} s"
                if before is not None:
                    tx, nx = vigil_inventory(before, cfg, sim.password)
                    a_before.append(tx)
                    line += f", before {tx:.2f} s ({nx} VMs)"
                print(line + f" ({na} VMs)", flush=True)
            results["vms"] = na
            results["a_inventory_s"] = statistics.median(a)
            results["b_pyvmomi_s"] = statistics.median(b)
            results["a_runs"], results["b_runs"] = a, b
            reads = in_process_reads(sim, args.repeat, args.traversal_repeat)
            results.update(asyncio.run(reads))
            floor = [import_floor(ROOT, sim.password) for _ in range(args.repeat)]
            results["a_import_floor_s"] = statistics.median(floor)
            cmd = [sys.executable, __file__, "--child-rawwait", sim.url, sim.user, sim.password]
            cmd += ["--changes", str(max(3, args.changes // 2))]
            raw = json.loads(run_timed(cmd, env_for(ROOT, sim.password))[1].splitlines()[-1])
            results["e0_simulator_alone_p50_s"] = raw["raw_change_p50_s"]
            w = watch(ROOT, sim, args.changes)
            results.update({f"d_{k}": v for k, v in w.items()})
            print(f"watcher: {w}", flush=True)
            if before is not None:
                results["before_rev"] = args.before_rev
                results["a_before_inventory_s"] = statistics.median(a_before)
                results["a_before_runs"] = a_before
                wb = watch(before, sim, args.before_changes)
                results.update({f"d_before_{k}": v for k, v in wb.items()})
                print(f"watcher before: {wb}", flush=True)
    a_s, b_s = results["a_inventory_s"], results["b_pyvmomi_s"]
    d_s = results["d_first_tree_s"]
    results["a_over_b"] = a_s / b_s  # type: ignore[operator]
    results["d_over_b"] = d_s / b_s  # type: ignore[operator]
    print(f"VMs                                        {results['vms']:>8}")
    print(f"(a) vigil inventory --json, whole process  {a_s:>8.2f} s  = {a_s / b_s:.2f} x (b)")  # type: ignore[operator]
    print(f"(b) pyVmomi lean ContainerView read        {b_s:>8.2f} s")
    print(
        f"    of which `import protector.cli` alone {results['a_import_floor_s']:.2f} s; "
        f"the read with tags in process {results['c_inventory_with_tags_s']:.2f} s"
    )
    print(
        f"(c) view read {results['c_view_read_s']:.2f} s, "
        f"traversal-spec read {results['c_traversal_read_s']:.2f} s (in process)"
    )
    print(
        f"(d) watcher start -> first complete tree   {d_s:>8.2f} s  = {d_s / b_s:.2f} x (b), "  # type: ignore[operator]
        f"peak RSS {results['d_peak_rss_mb']:.0f} MB"
    )
    print(
        f"(e) rename -> event p50 {results['d_change_p50_s']:.2f} s, "
        f"p99 {results['d_change_p99_s']:.2f} s over {results['d_changes']} renames; "
        f"the simulator alone (pyVmomi, rename -> update) p50 "
        f"{results['e0_simulator_alone_p50_s']:.2f} s"
    )
    if "before_rev" in results:
        print(
            f"before ({args.before_rev}): inventory {results['a_before_inventory_s']:.2f} s, "
            f"first tree {results['d_before_first_tree_s']:.2f} s, rename p50 "
            f"{results['d_before_change_p50_s']:.2f} s over {results['d_before_changes']}"
        )
    out = ROOT / "bench" / "results" / "watcher.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.now(UTC).isoformat(), **results}
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
