"""Policy engine benchmark: full evaluation and single-VM re-evaluation.

    .venv/bin/python bench/bench_policies.py [--vms 10000] [--policies 200] [--runs 5]

Goals (issue 4): 10,000 VMs x 200 policies full evaluation <= 0.5 s; single-VM
re-evaluation <= 2 ms median. The synthetic inventory has 4 datacenters, nested folders,
resource pools, tags, custom attributes and annotations; the policies mix every selector
kind (path globs with **, name globs and re: regexes, tags, attributes, annotations,
power states, guest ids) and exclusions. Prints medians; writes bench/results/policies.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.engine import CompiledSet, evaluate, evaluate_one  # noqa: E402
from policies.model import (  # noqa: E402
    Policy,
    PolicySet,
    Retention,
    Schedule,
    Selector,
    VmFacts,
)

ROLES = ["web", "db", "app", "cache", "mq", "build", "test", "ad", "file", "mon"]
GUESTS = ["rhel8_64Guest", "rhel9_64Guest", "ubuntu64Guest", "windows2019srv_64Guest", "otherGuest"]
TAGS = (
    [f"Backup:{t}" for t in ("Gold", "Silver", "Bronze", "Never")]
    + [f"Env:{e}" for e in ("prod", "stage", "dev", "test")]
    + [f"App:{a}" for a in range(20)]
)


def make_inventory(n: int, rng: random.Random) -> list[VmFacts]:
    vms = []
    for i in range(n):
        dc = f"DC{i % 4}"
        env = ["prod", "stage", "dev", "test"][rng.randrange(4)]
        team = f"team-{rng.randrange(25)}"
        role = ROLES[rng.randrange(len(ROLES))]
        folder = f"/{dc}/vm/{env}/{team}"
        if rng.random() < 0.3:
            folder += f"/sub{rng.randrange(5)}"
        name = f"{role}-{i:05d}" + ("-tmp" if rng.random() < 0.02 else "")
        template = rng.random() < 0.01
        vms.append(
            VmFacts(
                key=f"vc1:{i:08x}",
                path=f"{folder}/{name}",
                name=name,
                datacenter=dc,
                folder=folder,
                resource_pool=None if template else f"/{dc}/host/C{i % 8}/Resources/{env}",
                power_state="poweredOn" if rng.random() < 0.85 else "poweredOff",
                guest_id=GUESTS[rng.randrange(len(GUESTS))],
                tags=frozenset(rng.sample(TAGS, rng.randrange(4))),
                attributes={"Owner": team, "CostCenter": str(rng.randrange(100))},
                annotation=f"owner {team}; backup={'yes' if rng.random() < 0.7 else 'no'}",
                template=template,
            )
        )
    return vms


def make_policies(n: int, rng: random.Random) -> PolicySet:
    out = []
    for i in range(n):
        dc = f"DC{i % 4}"
        env = ["prod", "stage", "dev", "test"][i % 4]
        kind = i % 8
        sel: dict = {}
        if kind == 0:
            sel = {"folders": (f"/{dc}/vm/{env}/team-{i % 25}/**",)}
        elif kind == 1:
            sel = {"tags": (TAGS[i % 4],), "datacenters": (dc,)}
        elif kind == 2:
            sel = {"names": (f"{ROLES[i % 10]}-*", f"re:^{ROLES[(i + 3) % 10]}-0{i % 10}")}
        elif kind == 3:
            sel = {"folders": (f"/{dc}/vm/{env}/**",), "guest_ids": ("rhel*",)}
        elif kind == 4:
            sel = {"attributes": (("Owner", (f"team-{i % 25}",)),), "power_states": ("poweredOn",)}
        elif kind == 5:
            sel = {"resource_pools": (f"/{dc}/host/*/Resources/{env}",), "tags": ("App:*",)}
        elif kind == 6:
            sel = {"annotation": ("re:backup=yes",), "folders": (f"/**/team-{i % 25}/**",)}
        else:
            sel = {"names": (f"re:^{ROLES[i % 10]}-[0-9]+$",), "datacenters": ("DC*",)}
        exclude = Selector(names=("*-tmp",), tags=("Backup:Never",))
        out.append(
            Policy(
                name=f"p{i:03d}",
                priority=i,
                select=Selector(**sel),
                exclude=exclude,
                schedule=Schedule(rpo=__import__("datetime").timedelta(hours=24)),
                retention=Retention(keep_last=3),
            )
        )
    return PolicySet(tuple(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(4)
    vms = make_inventory(args.vms, rng)
    ps = make_policies(args.policies, rng)

    t = time.perf_counter()
    compiled = CompiledSet(ps)
    compile_s = time.perf_counter() - t

    full = []
    for _ in range(args.runs):
        t = time.perf_counter()
        ev = evaluate(compiled, vms)
        full.append(time.perf_counter() - t)

    sample = rng.sample(vms, 1000)
    single = []
    for vm in sample:
        t = time.perf_counter()
        r = evaluate_one(compiled, vm)
        single.append(time.perf_counter() - t)
        assert r == ev.results[vm.key], vm.path  # both paths must agree

    res = {
        "vms": args.vms,
        "policies": args.policies,
        "compile_s": round(compile_s, 4),
        "full_eval_median_s": round(statistics.median(full), 4),
        "full_eval_max_s": round(max(full), 4),
        "single_vm_median_ms": round(statistics.median(single) * 1000, 4),
        "single_vm_p99_ms": round(sorted(single)[int(len(single) * 0.99)] * 1000, 4),
        "protected": sum(1 for r in ev.results.values() if r.winner),
        "overlaps": len(ev.overlaps),
        "conflicts": len(ev.conflicts),
        "avg_matches_per_vm": round(sum(len(r.matches) for r in ev.results.values()) / len(vms), 1),
        "unprotected": len(ev.unprotected),
    }
    for k, v in res.items():
        print(f"{k:22} {v}")
    out = ROOT / "bench" / "results" / "policies.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
