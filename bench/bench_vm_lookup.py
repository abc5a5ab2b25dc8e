"""`vigil backup VM`'s lookup at scale (issue 18): the full inventory read with tags that
it used to make (watcher.inventory.read_inventory_with_tags + vmlookup.find_vm) against
the targeted lookup (protector/vsphere/vmfind.py), interleaved in the same run.

    .venv/bin/python bench/bench_vm_lookup.py [--vms 10000] [--runs 5]

The simulator holds VMS VMs in 10 clusters' root pools, as bench_watcher.py makes them
(`-cluster 10 -host 1 -standalone-host 0 -pool 0 -vm VMS/10`, govc vcsim's
`-cluster 10 -cluster-host 1 -host 0 -vm 1000`). One VM carries a tag. Per run and per
way of naming it (name, inventory path, instance UUID, MoRef) both lookups find that VM
on one logged-in session (the CLI's `lookup` phase; login and process start are the
same for both) and must return the same node. Writes bench/results/vm_lookup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protector.devtools.simulator import Simulator  # noqa: E402
from protector.vsphere.vmfind import lookup_vm  # noqa: E402
from protector.vsphere.vmlookup import find_vm  # noqa: E402
from watcher.inventory import read_inventory_with_tags  # noqa: E402
from watcher.session import Credentials, Session  # noqa: E402
from watcher.soap import Endpoint  # noqa: E402
from watcher.tags import TagClient  # noqa: E402

CLUSTERS = 10


async def full_read(session: Session, spec: str) -> Any:
    tree = await read_inventory_with_tags(session, required=False)
    return find_vm(tree.vms(), spec)


async def targeted(session: Session, spec: str) -> Any:
    return (await lookup_vm(session, spec)).node


async def bench(sim: Simulator, runs: int) -> dict[str, Any]:
    async with Session(Endpoint(sim.url), Credentials(sim.user, sim.password)) as s:
        tree = await read_inventory_with_tags(s, required=False)
        vms = sorted(tree.vms(), key=lambda v: v.moref)
        vm = vms[len(vms) // 2]
        admin = TagClient(Endpoint(sim.url), sim.user, sim.password)
        try:
            tag = await admin.create_tag(await admin.create_category("bench"), "gold")
            await admin.attach(tag, vm.moref)
        finally:
            await admin.close()
        specs = {
            "name": vm.name,
            "path": vm.path,
            "instance_uuid": vm.instance_uuid,
            "moref": vm.moref,
        }
        times: dict[str, list[float]] = {}
        for i in range(runs):
            for kind, spec in specs.items():
                assert spec is not None
                nodes = {}
                order = [("full", full_read), ("targeted", targeted)]
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    t = time.perf_counter()
                    nodes[name] = await fn(s, spec)
                    times.setdefault(f"{kind}_{name}_s", []).append(time.perf_counter() - t)
                if nodes["full"] != nodes["targeted"]:
                    raise SystemExit(f"{kind} {spec}: {nodes['full']} != {nodes['targeted']}")
                assert nodes["full"].tags, "the tagged VM's node lost its tag"
            print(
                f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()),
                file=sys.stderr,
                flush=True,
            )
    return {"vms": len(vms), "times": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    per = max(1, args.vms // CLUSTERS)
    sim_args = ["-cluster", str(CLUSTERS), "-host", "1", "-standalone-host", "0"]
    sim_args += ["-pool", "0", "-vm", str(per)]
    with Simulator(args=sim_args) as sim:
        out = asyncio.run(bench(sim, args.runs))
    med = {k: statistics.median(v) for k, v in out["times"].items()}
    print(f"\n{out['vms']} VMs, median of {args.runs} runs (one session, interleaved)\n")
    print("| VM named by | full read + tags | targeted | ratio |")
    print("|---|---|---|---|")
    for kind in ("name", "path", "instance_uuid", "moref"):
        full, new = med[f"{kind}_full_s"], med[f"{kind}_targeted_s"]
        print(f"| {kind} | {full:.3f} s | {new:.4f} s | {full / new:.0f}x |")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "vm_lookup.json").write_text(
        json.dumps({"sim_args": sim_args, **out, "median": med}, indent=1)
    )


if __name__ == "__main__":
    main()
