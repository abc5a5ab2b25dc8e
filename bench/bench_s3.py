"""Object-storage benchmark: the repository write path on SeaweedFS (S3 on loopback) vs the
local backend in the same run, restic to the same SeaweedFS as the peer.

    .venv/bin/python bench/bench_s3.py [--work /var/tmp/vigil-bench-s3] [--size 2G]

Workload: ../shared/bench/mkimage.py's guest-like image and its --mutate 1 variant (the
changed extents drive the incremental, as CBT would). Measured per target: full and 1 %
incremental backup time and throughput (MiB of image per second), S3 requests by
operation and per GiB of image and per GiB stored; with object lock, the retention calls of
an incremental whose base generation still covers it (the usual day) and of one where it
ran out (about once every object_lock_generation_days), and their mean over 30 daily
backups. Every data directory lives under --work on one filesystem; SeaweedFS shares the
machine's cores with vigil, as an on-site appliance would not. Writes
bench/results/s3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_repository  # noqa: E402
from bench_repository import PASS, changed_slots, make_images, ours_backup  # noqa: E402

from repository import Repository  # noqa: E402
from repository.backend import Backend  # noqa: E402
from repository.codec import ZERO_ID, chunk_key  # noqa: E402
from repository.s3 import RetentionPolicy, S3Backend, open_s3_backend  # noqa: E402
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedServer  # noqa: E402

GIB = float(1 << 30)
LOCK_DAYS = 30
GENERATION = 7


def stored_bytes(backend: Backend) -> int:
    return sum(i.size for i in backend.list(""))


def run_vigil(
    name: str,
    state: Path,
    backend: Backend | None,
    base: Path,
    mut: Path,
    slots: list[int],
    threads: int,
    chunk_size: int,
    put_first: bool | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    shutil.rmtree(state, ignore_errors=True)
    repo = Repository.init(
        state,
        chunk_size=chunk_size,
        passphrase=PASS,
        backend=backend,
        state_dir=state.with_name(state.name + ".state"),
    )
    repo.objects.put_first = put_first  # None: as the backend says (S3: write first)
    calls0 = Counter(backend.calls) if isinstance(backend, S3Backend) else Counter()
    cpu0, peer0 = time.process_time(), proc_cpu(server_pid)
    t = time.perf_counter()
    p1 = ours_backup(repo, base, None, threads)
    full_s = time.perf_counter() - t
    full_cpu, full_peer_cpu = time.process_time() - cpu0, proc_cpu(server_pid) - peer0
    calls_full = Counter(backend.calls) - calls0 if isinstance(backend, S3Backend) else Counter()
    size = stored_bytes(repo.backend)
    t = time.perf_counter()
    p2 = ours_backup(repo, mut, slots, threads)
    incr_s = time.perf_counter() - t
    calls_incr = (
        Counter(backend.calls) - calls0 - calls_full if isinstance(backend, S3Backend) else None
    )
    image = base.stat().st_size
    out: dict[str, Any] = {
        "target": name,
        "full_s": full_s,
        "full_mib_s": image / (1 << 20) / full_s,
        # CPU seconds per GiB of image in the full backup: vigil's (this process, all its
        # threads) and the S3 server's; on 2 shared cores they add up to the wall time.
        "full_cpu_s_per_gib": full_cpu / (image / GIB),
        "full_server_cpu_s_per_gib": full_peer_cpu / (image / GIB),
        "incr_s": incr_s,
        "incr_mib_s": image / (1 << 20) / incr_s,
        "stored_bytes": size,
    }
    if calls_incr is not None:
        n_full = sum(calls_full.values())
        out |= {
            "requests_full": dict(calls_full),
            "requests_incr": dict(calls_incr),
            "requests_per_gib_image_full": n_full / (image / GIB),
            "requests_per_gib_stored_full": n_full / (size / GIB),
        }
    if isinstance(backend, S3Backend) and backend.retention is not None:
        out["retention"] = retention_calls(repo, backend, p1, p2)
    return out


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus` (sched_setaffinity acts on one thread;
    threads started later inherit their creator's)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def proc_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_copy(local_repo: Path, server: SeaweedServer, threads: int) -> dict[str, Any]:
    """`vigil copy` throughput: the local repository's points into a fresh S3 prefix."""
    from repository.copy import copy_points

    src = Repository.open(local_repo, PASS, local_repo.with_name("local-repo.state"))
    dst_backend = open_s3_backend(server.options("bench", "copy", max_connections=threads))
    dst = Repository.init(
        "copy",
        chunk_size=src.chunk_size,
        passphrase="the copy's own passphrase",
        backend=dst_backend,
        state_dir=local_repo.with_name("copy.state"),
    )
    t = time.perf_counter()
    res = copy_points(src, dst, threads=threads)
    took = time.perf_counter() - t
    return {
        "s": took,
        "points": len(res.copied),
        "chunks_read": res.chunks_read,
        "chunks_sent": res.chunks_sent,
        "bytes_sent": res.bytes_sent,
        "sent_mib_s": res.bytes_sent / (1 << 20) / took,
        "requests": dict(dst_backend.calls),
    }


def retention_calls(repo: Repository, backend: S3Backend, p1: str, p2: str) -> dict[str, Any]:
    """The calls a point writer makes through retain_point for the incremental p2 on top
    of p1, against the server. The changed chunks were written by the writer itself (it
    knows their retention); the reused ones are judged from a fresh process that remembers
    nothing of the full backup, as after a daemon restart."""
    m1, m2 = repo.load_manifest(p1), repo.load_manifest(p2)
    _m, i1 = repo.disk_index(p1, "disk0")
    _m, i2 = repo.disk_index(p2, "disk0")
    old = {chunk_key(c) for c in i1.ids if c != ZERO_ID}
    new = {chunk_key(c) for c in i2.ids if c != ZERO_ID}
    reused, changed = new & old, new - old
    fresh = S3Backend(backend.opts)
    fresh.check_bucket()
    for k in changed:  # what the writer itself remembers of the chunks it wrote
        if (until := backend._retained.get(k)) is not None:
            fresh._retained.set(k, until)
    same_gen = fresh.retain_point(reused, changed, m1.committed_at, m2.committed_at)
    policy = fresh.retention
    assert policy is not None
    # The day the base's generation runs out (simulated clock, real calls).
    t = m1.committed_at
    while policy.base_covers(m1.committed_at, t):
        t += timedelta(hours=6)
    t0 = time.perf_counter()
    crossing = fresh.retain_point(reused, changed, m1.committed_at, t)
    crossing_s = time.perf_counter() - t0
    # 30 daily incrementals: which days cross a generation (pure, same rule).
    days, base_time = [], m1.committed_at
    for d in range(1, 31):
        now = m1.committed_at + timedelta(days=d)
        days.append(not policy.base_covers(base_time, now))
        base_time = now
    crossings = sum(days)
    return {
        "object_lock_days": LOCK_DAYS,
        "generation_days": GENERATION,
        "referenced_chunks": len(new),
        "calls_same_generation": same_gen,
        "calls_generation_crossed": crossing,
        "crossing_seconds": crossing_s,
        "crossings_in_30_daily": crossings,
        "mean_calls_per_daily_incremental": (crossings * crossing + (30 - crossings) * same_gen)
        / 30,
        "naive_calls_per_incremental": len(reused),
    }


def run_restic(work: Path, server: SeaweedServer, bucket: str, base: Path, mut: Path) -> dict:
    env = dict(
        os.environ,
        RESTIC_PASSWORD=PASS,
        RESTIC_REPOSITORY=f"s3:{server.endpoint}/{bucket}/restic",
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        XDG_CACHE_HOME=str(work / "restic-cache"),
    )
    shutil.rmtree(work / "restic-cache", ignore_errors=True)

    def sh(cmd: str) -> float:
        t = time.perf_counter()
        # Under --pin restic inherits this process's CPU (the one vigil has).
        subprocess.run(cmd, shell=True, check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    sh("restic init --repository-version 2")
    full = sh(f"restic backup --stdin --stdin-filename disk.img < {base}")
    incr = sh(f"restic backup --stdin --stdin-filename disk.img < {mut}")
    mib = base.stat().st_size / (1 << 20)
    return {
        "target": "restic 0.14 → SeaweedFS",
        "full_s": full,
        "full_mib_s": mib / full,
        "incr_s": incr,
        "incr_mib_s": mib / incr,
    }


def compare_put_first(args: argparse.Namespace, base: Path, mut: Path, slots: list[int]) -> None:
    """The chunk write on S3 with and without the check before it, alternated in one run
    (the machine's load drifts): medians of full and incremental throughput and of S3
    requests per GiB of image in the full backup. Writes bench/results/s3_put_first.json."""
    import statistics

    weed_dir = args.work / "weed"
    shutil.rmtree(weed_dir, ignore_errors=True)
    runs: dict[str, list[dict[str, Any]]] = {"check first": [], "put first": []}
    with SeaweedServer(weed_dir) as server:
        server.make_bucket("bench")
        for i in range(args.put_first_runs):
            for name, put_first in (("check first", False), ("put first", True)):
                s3 = open_s3_backend(
                    server.options("bench", f"cmp-{i}-{put_first}", max_connections=args.threads)
                )
                r = run_vigil(
                    name,
                    args.work / "cmp-state",
                    s3,
                    base,
                    mut,
                    slots,
                    args.threads,
                    args.chunk_size,
                    put_first=put_first,
                )
                runs[name].append(r)
                print(
                    name,
                    f"full {r['full_mib_s']:.0f} MiB/s, incr {r['incr_s']:.2f} s, "
                    f"{r['requests_per_gib_image_full']:.0f} req/GiB, "
                    f"full {r['requests_full']}, incr {r['requests_incr']}",
                    file=sys.stderr,
                    flush=True,
                )
    shutil.rmtree(weed_dir, ignore_errors=True)
    med = {
        name: {
            k: statistics.median(r[k] for r in rs)
            for k in ("full_mib_s", "incr_s", "requests_per_gib_image_full")
        }
        | {
            "incr_requests": statistics.median(sum(r["requests_incr"].values()) for r in rs),
        }
        for name, rs in runs.items()
    }
    print(
        f"\nimage {base.stat().st_size / GIB:.2f} GiB, {args.put_first_runs} runs each, medians\n"
    )
    print("| chunk write | full MiB/s | incr s | S3 requests / GiB (full) | requests (incr) |")
    print("|---|---|---|---|---|")
    for name, m in med.items():
        print(
            f"| {name} | {m['full_mib_s']:.0f} | {m['incr_s']:.2f} | "
            f"{m['requests_per_gib_image_full']:.0f} | {m['incr_requests']:.0f} |"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "s3_put_first.json").write_text(
        json.dumps(
            {"date": datetime.now(UTC).isoformat(), "medians": med, "runs": runs},
            indent=1,
            default=str,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/vigil-bench-s3"))
    ap.add_argument("--size", default="2G")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--chunk-size", type=int, default=1 << 20)
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="vigil (and restic) on CPU 0 only, SeaweedFS on CPU 1 only: the S3 service on a "
        "core of its own, as an appliance or a cloud is, and every backup tool given the same "
        "one core; without it all share both cores",
    )
    ap.add_argument(
        "--put-first-runs",
        type=int,
        default=0,
        help="only compare, N times each in alternation on one SeaweedFS, the chunk write "
        "with a check before it (the old way) and without (put first); print medians",
    )
    ap.add_argument(
        "--mkimage",
        type=Path,
        default=bench_repository.MKIMAGE,
        help="shared/bench/mkimage.py of the steering checkout",
    )
    args = ap.parse_args()
    bench_repository.MKIMAGE = args.mkimage
    args.work.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin:
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs")
        pin(os.getpid(), {cpus[0]})  # before the backups start their thread pools
    base, mut, extents = make_images(args.work, args.size)
    slots = changed_slots(extents, args.chunk_size)
    results: list[dict[str, Any]] = []

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        short = {k: round(v, 2) for k, v in r.items() if isinstance(v, float)}
        print(r["target"], json.dumps(short), file=sys.stderr, flush=True)

    run = lambda name, state, backend, pid=None: run_vigil(  # noqa: E731
        name, state, backend, base, mut, slots, args.threads, args.chunk_size, server_pid=pid
    )
    if args.put_first_runs:
        compare_put_first(args, base, mut, slots)
        return
    local_repo = args.work / "local-repo"
    report(run("vigil → local", local_repo, None))
    weed_dir = args.work / "weed"
    shutil.rmtree(weed_dir, ignore_errors=True)
    with SeaweedServer(weed_dir) as server:
        if args.pin:
            if server.proc is None:
                raise SystemExit("--pin: no SeaweedFS process to pin")
            pin(server.proc.pid, {cpus[1]})
        server.make_bucket("bench")
        server.make_bucket("bench-locked", lock=True)
        s3 = open_s3_backend(server.options("bench", "vigil", max_connections=args.threads))
        pid = server.proc.pid if server.proc else None
        report(run("vigil → SeaweedFS", args.work / "s3-state", s3, pid))
        locked = open_s3_backend(
            server.options(
                "bench-locked",
                "vigil",
                max_connections=args.threads,
                object_lock_days=LOCK_DAYS,
                object_lock_generation_days=GENERATION,
            )
        )
        report(run("vigil → SeaweedFS, object lock", args.work / "s3l-state", locked, pid))
        if not args.skip_restic and shutil.which("restic"):
            report(run_restic(args.work, server, "bench", base, mut))
        copy = run_copy(local_repo, server, args.threads)
    shutil.rmtree(weed_dir, ignore_errors=True)
    shutil.rmtree(local_repo)

    by = {r["target"]: r for r in results}
    local = by["vigil → local"]
    ratios = {
        t: {
            "full_vs_local": r["full_mib_s"] / local["full_mib_s"],
            "incr_vs_local": r["incr_mib_s"] / local["incr_mib_s"],
        }
        for t, r in by.items()
    }
    restic = by.get("restic 0.14 → SeaweedFS")
    if restic:
        s3r = by["vigil → SeaweedFS"]
        ratios["vigil → SeaweedFS"] |= {
            "full_vs_restic": s3r["full_mib_s"] / restic["full_mib_s"],
            "incr_vs_restic": s3r["incr_mib_s"] / restic["incr_mib_s"],
        }
    cores = (
        f"vigil and restic on CPU {cpus[0]}, SeaweedFS on CPU {cpus[1]}"
        if args.pin
        else f"all share {len(cpus)} CPUs"
    )
    print(
        f"\nimage {base.stat().st_size / GIB:.2f} GiB, {len(slots)} changed slots, "
        f"{args.threads} threads, {cores}\n"
    )
    print(
        "| target | full s | full MiB/s | incr s | incr MiB/s | full × local | req/GiB "
        "| CPU s/GiB vigil + server |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for t, r in by.items():
        req = r.get("requests_per_gib_image_full")
        print(
            f"| {t} | {r['full_s']:.1f} | {r['full_mib_s']:.0f} | {r['incr_s']:.1f} "
            f"| {r['incr_mib_s']:.0f} | {ratios[t]['full_vs_local']:.2f} "
            f"| {f'{req:.0f}' if req else '-'} "
            f"| {r.get('full_cpu_s_per_gib', 0):.2f} "
            f"+ {r.get('full_server_cpu_s_per_gib', 0):.2f} |"
        )
    print(
        f"\nvigil copy local → SeaweedFS (both points, re-encrypted): {copy['s']:.1f} s, "
        f"{copy['sent_mib_s']:.0f} MiB/s of stored (compressed, encrypted) data, "
        f"{copy['chunks_sent']} chunks "
        f"({copy['bytes_sent'] / GIB:.2f} GiB) sent, {copy['chunks_read']} read"
    )
    ret = by["vigil → SeaweedFS, object lock"].get("retention")
    if ret:
        print(
            f"\nretention calls per incremental: {ret['calls_same_generation']} on a day the "
            f"base generation covers, {ret['calls_generation_crossed']} when it ran out "
            f"({ret['crossings_in_30_daily']}× in 30 daily backups: mean "
            f"{ret['mean_calls_per_daily_incremental']:.0f}/backup vs "
            f"{ret['naive_calls_per_incremental']} extending every reused chunk every time)"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    meta = {
        "date": datetime.now(UTC).isoformat(),
        "image_bytes": base.stat().st_size,
        "changed_slots": len(slots),
        "threads": args.threads,
        "chunk_size": args.chunk_size,
        "pinned": args.pin,
        "policy": RetentionPolicy(LOCK_DAYS, "COMPLIANCE", GENERATION).__repr__(),
    }
    (out / "s3.json").write_text(
        json.dumps(
            {"meta": meta, "results": results, "ratios": ratios, "copy": copy},
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
