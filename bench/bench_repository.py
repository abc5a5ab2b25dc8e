"""Repository data-path benchmark against restic 0.14 and borg 1.2 on the same image.

    .venv/bin/python bench/bench_repository.py [--work /dev/shm/vigil-bench] [--runs 3]

Workload: ../shared/bench/mkimage.py's 2 GiB guest-like image and its --mutate 1 variant
with the changed extents. Ours runs through the repository alone (no vSphere) with a
2-thread pool: full write, incremental given the changed extents, full restore to a file.
All three tools encrypt. Everything lives in tmpfs so the numbers measure CPU work.
Prints a table of medians; also writes bench/results/repository.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repository import DEFAULT_CHUNK_SIZE, DiskRecord, Repository, VmIdentity  # noqa: E402

# ../shared from the main checkout, ../../shared from a worktree under wt/ (as
# bench_backup_cli.py finds it).
MKIMAGE = next(
    (p for p in (r / "shared" / "bench" / "mkimage.py" for r in ROOT.parents) if p.exists()),
    ROOT.parent / "shared" / "bench" / "mkimage.py",
)
PASS = "bench-passphrase"
VM = VmIdentity("bench-vc", "bench-vm", "bench")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_images(work: Path, size: str) -> tuple[Path, Path, list[dict]]:
    base, mut, ext = work / "base.img", work / "mut.img", work / "changed.json"
    if not base.exists():
        subprocess.run(
            [sys.executable, MKIMAGE, base, "--size", size, "--seed", "1"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if not ext.exists():
        shutil.copyfile(base, mut)
        subprocess.run(
            [sys.executable, MKIMAGE, mut, "--mutate", "1", "--seed", "2", "--extents-out", ext],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return base, mut, json.loads(ext.read_text())


def ours_backup(repo: Repository, image: Path, slots: list[int] | None, threads: int) -> str:
    size = image.stat().st_size
    cs = repo.chunk_size
    fd = os.open(image, os.O_RDONLY)
    try:
        with repo.begin_point(VM) as pw:
            base = pw.previous_index("disk0") if slots is not None else None
            w = pw.disk_writer(size, base)
            todo = slots if slots is not None else range(-(-size // cs))

            def one(slot: int) -> None:
                w.put(slot, os.pread(fd, min(cs, size - slot * cs), slot * cs))

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, todo))
            rec = DiskRecord.for_index("disk0", w.finish())
            return pw.commit(disks=[rec], started_at=datetime.now(UTC))
    finally:
        os.close(fd)


def changed_slots(extents: list[dict], chunk_size: int) -> list[int]:
    s: set[int] = set()
    for e in extents:
        first, last = e["offset"], e["offset"] + e["length"] - 1
        s.update(range(first // chunk_size, last // chunk_size + 1))
    return sorted(s)


def run_ours(
    work: Path, base: Path, mut: Path, extents: list[dict], chunk_size: int, threads: int
) -> dict[str, float]:
    repo_dir, out = work / f"vigil-repo-{chunk_size}", work / "vigil-restore.img"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo = Repository.init(repo_dir, chunk_size=chunk_size, passphrase=PASS)
    full = timed(lambda: ours_backup(repo, base, None, threads))
    size_full = du(repo_dir)
    slots = changed_slots(extents, chunk_size)
    points: list[str] = []
    incr = timed(lambda: points.append(ours_backup(repo, mut, slots, threads)))
    out.unlink(missing_ok=True)
    restore = timed(lambda: repo.export_raw(points[0], "disk0", out, threads=threads))
    subprocess.run(["cmp", "-s", out, mut], check=True)  # restored bytes are exact
    out.unlink()
    shutil.rmtree(repo_dir)
    return {
        "full_s": full,
        "size": size_full,
        "incr_s": incr,
        "restore_s": restore,
        "changed_slots": len(slots),
    }


def sh(cmd: str, env: dict[str, str]) -> None:
    subprocess.run(
        cmd, shell=True, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def run_restic(work: Path, base: Path, mut: Path) -> dict[str, float]:
    repo, out = work / "restic-repo", work / "restic-restore.img"
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(
        os.environ,
        RESTIC_PASSWORD=PASS,
        RESTIC_REPOSITORY=str(repo),
        XDG_CACHE_HOME=str(work / "restic-cache"),
    )
    shutil.rmtree(work / "restic-cache", ignore_errors=True)
    sh("restic init --repository-version 2", env)
    full = timed(lambda: sh(f"restic backup --stdin --stdin-filename disk.img < {base}", env))
    size = du(repo)
    incr = timed(lambda: sh(f"restic backup --stdin --stdin-filename disk.img < {mut}", env))
    restore = timed(lambda: sh(f"restic dump latest disk.img > {out}", env))
    subprocess.run(["cmp", "-s", out, mut], check=True)
    out.unlink()
    shutil.rmtree(repo)
    return {"full_s": full, "size": size, "incr_s": incr, "restore_s": restore}


def run_borg(work: Path, base: Path, mut: Path) -> dict[str, float]:
    repo, out = work / "borg-repo", work / "borg-restore.img"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(work / "borg-home", ignore_errors=True)
    env = dict(
        os.environ, BORG_PASSPHRASE=PASS, BORG_REPO=str(repo), BORG_BASE_DIR=str(work / "borg-home")
    )
    sh("borg init -e repokey-blake2", env)
    opts = "--chunker-params fixed,4194304 --compression zstd,1 --stdin-name disk.img"
    full = timed(lambda: sh(f"borg create {opts} ::full - < {base}", env))
    size = du(repo)
    incr = timed(lambda: sh(f"borg create {opts} ::incr - < {mut}", env))
    restore = timed(lambda: sh(f"borg extract --stdout ::incr > {out}", env))
    subprocess.run(["cmp", "-s", out, mut], check=True)
    out.unlink()
    shutil.rmtree(repo)
    return {"full_s": full, "size": size, "incr_s": incr, "restore_s": restore}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/dev/shm/vigil-bench"))
    ap.add_argument("--size", default="2G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--chunk-sizes",
        default=str(DEFAULT_CHUNK_SIZE),
        help="comma-separated chunk sizes for vigil (default: the repository's, 1 MiB)",
    )
    ap.add_argument("--skip-others", action="store_true", help="only measure vigil")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base, mut, extents = make_images(args.work, args.size)
    image_size = base.stat().st_size

    tools: dict[str, Callable[[], dict[str, float]]] = {}
    for cs in (int(c) for c in args.chunk_sizes.split(",")):
        tools[f"vigil ({cs >> 10} KiB)"] = lambda cs=cs: run_ours(
            args.work, base, mut, extents, cs, args.threads
        )
    if not args.skip_others:
        tools["restic 0.14"] = lambda: run_restic(args.work, base, mut)
        tools["borg 1.2"] = lambda: run_borg(args.work, base, mut)
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in tools}
    for i in range(args.runs):
        for name, fn in tools.items():
            r = fn()
            runs[name].append(r)
            print(
                f"run {i + 1} {name}: {json.dumps({k: round(v, 3) for k, v in r.items()})}",
                file=sys.stderr,
                flush=True,
            )

    med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in runs.items()}
    mib = image_size / (1 << 20)
    print(
        f"\nimage {mib:.0f} MiB, {len(extents)} changed extents, "
        f"{args.threads} threads, median of {args.runs} runs\n"
    )
    print(
        "| tool | full s | full MiB/s | repo MiB | incr s | incr % of full | restore s "
        "| restore MiB/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for t, m in med.items():
        print(
            f"| {t} | {m['full_s']:.2f} | {mib / m['full_s']:.0f} | {m['size'] / 2**20:.0f} "
            f"| {m['incr_s']:.2f} | {100 * m['incr_s'] / m['full_s']:.1f} "
            f"| {m['restore_s']:.2f} | {mib / m['restore_s']:.0f} |"
        )
    if "restic 0.14" in med:
        r = med["restic 0.14"]
        for t, m in med.items():
            if t.startswith("vigil"):
                print(
                    f"\n{t} vs restic: full x{r['full_s'] / m['full_s']:.2f} (target >= 1.5), "
                    f"size x{m['size'] / r['size']:.3f} (<= 1.05), "
                    f"incr {100 * m['incr_s'] / m['full_s']:.1f}% of full (<= 5), "
                    f"restore x{r['restore_s'] / m['restore_s']:.2f} (>= 1.5)"
                )
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "repository.json").write_text(json.dumps({"runs": runs, "median": med}, indent=1))


if __name__ == "__main__":
    main()
