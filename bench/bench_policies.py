"""Policy engine benchmark: full evaluation, single-VM re-evaluation, hostile patterns.

    .venv/bin/python bench/bench_policies.py [--vms 10000,50000] [--policies 200] [--runs 5]
        [--backtracking-reference]

Goals (issue 4): 10,000 VMs x 200 policies full evaluation <= 0.5 s; single-VM
re-evaluation <= 2 ms median. Issue 18 asks for the figure at 50,000 VMs; issue 19 (item 8)
for the time of the hostile patterns (a name that makes `^([a-z0-9]+-?)*$` backtrack, a
16 kB note against `*owner=*team=*env=*`) at their reported sizes and 10x and 100x those.
The synthetic inventory has 4 datacenters, nested folders, resource pools, tags, custom
attributes and annotations; the policies mix every selector kind (path globs with **, name
globs and re: regexes, tags, attributes, annotations, power states, guest ids) and
exclusions. Prints medians (and the minimum CPU time of a full evaluation, steadier on a
shared machine); writes bench/results/policies.json.
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


# Issue 19 item 8: patterns VM owners can feed values to. A backtracking engine needs 2.9 s
# for the name (doubling per character) and 6.9 s for the note (cubic in its length).
EXPONENTIAL = "re:^([a-z0-9]+-?)*$"
CUBIC = "*owner=*team=*env=*"


def _name(n: int) -> str:
    return "a" * (n - 1) + "!"


def _note(n: int) -> str:
    return ("owner=x team=y " * (n // 15 + 1))[:n]


def _best(fn, value, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn(value)
        best = min(best, time.perf_counter() - t)
    return best


def pathological(runs: int, reference: bool) -> dict:
    """Seconds per match of the hostile inputs at the issue's sizes and ten times those, with
    the engine in force; with `reference`, Python's backtracking `re` (the engine before
    issue 19) on the issue's sizes too — that takes several seconds by design."""
    import re

    from policies.patterns import compile_pattern

    out: dict = {}
    cases = [("regex_name", EXPONENTIAL, _name, 27), ("glob_note", CUBIC, _note, 16_000)]
    for label, pattern, make, size in cases:
        m = compile_pattern(pattern)
        for k in (1, 10, 100):
            out[f"{label}_{size * k}_s"] = round(_best(m, make(size * k), runs), 6)
        if reference:
            if pattern.startswith("re:"):
                rx = re.compile(pattern[3:]).search
            else:  # the translation the engine used before: "*" as ".*"
                rx = re.compile(".*owner=.*team=.*env=.*", re.DOTALL).fullmatch
            out[f"{label}_{size}_backtracking_s"] = round(_best(rx, make(size), 1), 3)
    return out


def scale(n_vms: int, n_policies: int, runs: int) -> dict:
    rng = random.Random(4)
    vms = make_inventory(n_vms, rng)
    ps = make_policies(n_policies, rng)

    t = time.perf_counter()
    compiled = CompiledSet(ps)
    compile_s = time.perf_counter() - t

    full, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        ev = evaluate(compiled, vms)
        full.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)

    sample = rng.sample(vms, 1000)
    single = []
    for vm in sample:
        t = time.perf_counter()
        r = evaluate_one(compiled, vm)
        single.append(time.perf_counter() - t)
        assert r == ev.results[vm.key], vm.path  # both paths must agree

    return {
        "vms": n_vms,
        "policies": n_policies,
        "compile_s": round(compile_s, 4),
        "full_eval_median_s": round(statistics.median(full), 4),
        "full_eval_max_s": round(max(full), 4),
        "full_eval_cpu_min_s": round(min(cpu), 4),  # CPU time: steadier on a shared machine
        "single_vm_median_ms": round(statistics.median(single) * 1000, 4),
        "single_vm_p99_ms": round(sorted(single)[int(len(single) * 0.99)] * 1000, 4),
        "protected": sum(1 for r in ev.results.values() if r.winner),
        "overlaps": len(ev.overlaps),
        "conflicts": len(ev.conflicts),
        "avg_matches_per_vm": round(sum(len(r.matches) for r in ev.results.values()) / len(vms), 1),
        "unprotected": len(ev.unprotected),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", default="10000,50000", help="inventory sizes, comma-separated")
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--backtracking-reference",
        action="store_true",
        help="also time Python's backtracking re on the hostile inputs (seconds each)",
    )
    args = ap.parse_args()
    res: dict = {"scales": []}
    for n in (int(v) for v in args.vms.split(",") if v):
        one = scale(n, args.policies, args.runs)
        res["scales"].append(one)
        for k, v in one.items():
            print(f"{k:22} {v}")
        print()
    res["pathological"] = pathological(args.runs, args.backtracking_reference)
    for k, v in res["pathological"].items():
        print(f"{k:34} {v}")
    out = ROOT / "bench" / "results" / "policies.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
