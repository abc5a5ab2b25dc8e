"""File-level restore benchmark: browsing and extracting from restore points in a local
repository, against `vigil export` on the same point.

    .venv/bin/python bench/bench_files.py [--work /dev/shm/vigil-bench-files] [--big-gib 1]

Builds (with mke2fs -d, mkntfs + ntfscp; nothing is mounted) a 4 GiB ext4 disk holding a
1 GiB file and a 10,000-file directory, and a 4 GiB NTFS disk holding a 1 GiB file; stores
each as a restore point (2 threads, as a backup would), then measures:

- listing the volumes and the root of each point, cold (a fresh process state: point,
  volume discovery and cache all new; the OS page cache is warm) — goal <= 1 s;
- extracting the 1 GiB file (`files get`) vs `Repository.export_raw` of the whole disk
  (what `vigil export` runs), both as bytes of data per second, alternating, median of
  3 rounds (tmpfs, so both measure CPU work) — goal >= 50 %;
- listing the 10,000-file directory (names, types, sizes, mtimes).

Prints a table; writes bench/results/files.json. A timing goal, never a pass/fail test.
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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.cli import Progress, files_get, files_ls  # noqa: E402
from repository import DiskRecord, Repository, VmIdentity  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


def sh(*cmd: object) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (16 * MIB)):
            f.write(os.urandom(16 * MIB))


def build_ext4(work: Path, big: int) -> Path:
    src = work / "ext-src"
    (src / "many").mkdir(parents=True)
    random_file(src / "big.bin", big)
    for i in range(10_000):
        (src / "many" / f"file-{i:05d}.txt").write_bytes(b"x" * (i % 200))
    for name in ("etc", "home", "var", "usr", "opt"):
        (src / name).mkdir()
    img = work / "ext4.img"
    with open(img, "wb") as f:
        f.truncate(4 * GIB)
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-d", src, img)
    shutil.rmtree(src)
    return img


def build_ntfs(work: Path, big: int) -> Path:
    img = work / "ntfs.img"
    with open(img, "wb") as f:
        f.truncate(4 * GIB)
    sh("mkntfs", "-q", "-F", "-Q", img)
    random_file(work / "big.bin", big)
    sh("ntfscp", "-q", img, work / "big.bin", "big.bin")
    for name in ("Users", "Windows", "Program Files"):
        (work / "small").write_bytes(b"data")
        sh("ntfscp", "-q", img, work / "small", name + ".txt")
    (work / "big.bin").unlink()
    return img


def store(repo: Repository, image: Path, name: str) -> str:
    vm = VmIdentity("bench-vc", f"bench-{name}", name)
    size = image.stat().st_size
    with repo.begin_point(vm) as pw:
        w = pw.disk_writer(size)
        cs = repo.chunk_size

        def put(slot: int) -> None:
            with open(image, "rb") as f:
                f.seek(slot * cs)
                w.put(slot, f.read(cs))

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(put, range(-(-size // cs))))
        rec = DiskRecord.for_index("disk-0", w.finish(), base_name=image.name)
        return pw.commit(disks=[rec], started_at=datetime.now(UTC))


def timed(fn: object) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - start, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default="/dev/shm/vigil-bench-files")
    ap.add_argument("--big-gib", type=float, default=1.0)
    args = ap.parse_args()
    for tool in ("mke2fs", "mkntfs", "ntfscp"):
        if shutil.which(tool) is None:
            print(f"bench_files: {tool} is missing (make test installs it)", file=sys.stderr)
            return 2
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    big = int(args.big_gib * GIB)
    repo = Repository.init(work / "repo")
    points = {}
    for name, build in (("ext4", build_ext4), ("ntfs", build_ntfs)):
        img = build(work, big)
        t, points[name] = timed(lambda img=img, name=name: store(repo, img, name))
        print(f"{name}: 4 GiB disk stored in {t:.1f} s", flush=True)
        img.unlink()

    results: dict[str, dict[str, float]] = {}
    for name, point in points.items():
        r: dict[str, float] = {}
        r["list_volumes_s"], _ = timed(lambda p=point: files_ls(repo, p, None, None))
        r["list_root_s"], listing = timed(lambda p=point: files_ls(repo, p, "/disk0", None))
        assert any(e["name"] == "big.bin" for e in listing)  # type: ignore[union-attr]
        if name == "ext4":
            r["list_10000_dir_s"], many = timed(
                lambda p=point: files_ls(repo, p, "/disk0/many", None)
            )
            assert len(many) == 10_000  # type: ignore[arg-type]
        # Extraction and export alternate, 3 rounds each, medians: the machine is shared.
        gets, exports = [], []
        for _ in range(3):
            out = work / f"out-{name}"
            t, _ = timed(
                lambda p=point, o=out: files_get(
                    repo, p, ["/disk0/big.bin"], str(o), Progress(False)
                )
            )
            assert (out / "big.bin").stat().st_size == big
            shutil.rmtree(out)
            gets.append(big / MIB / t)
            raw = work / f"{name}.raw"
            t, data = timed(lambda p=point, raw=raw: repo.export_raw(p, "disk-0", raw))
            raw.unlink()
            exports.append(int(data) / MIB / t)  # type: ignore[call-overload]
        r["get_mib_s"] = statistics.median(gets)
        r["export_mib_s"] = statistics.median(exports)
        r["get_vs_export"] = r["get_mib_s"] / r["export_mib_s"]
        results[name] = {k: round(v, 3) for k, v in r.items()}

    print(f"\n{'':6} {'volumes':>8} {'root':>7} {'10k dir':>8} {'get MiB/s':>10} "
          f"{'export MiB/s':>13} {'get/export':>11}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:6} {r['list_volumes_s']:>7.3f}s {r['list_root_s']:>6.3f}s "
            f"{r.get('list_10000_dir_s', float('nan')):>7.3f}s {r['get_mib_s']:>10.0f} "
            f"{r['export_mib_s']:>13.0f} {r['get_vs_export']:>10.0%}"
        )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "files.json").write_text(
        json.dumps({"big_bytes": big, "disk_bytes": 4 * GIB, "results": results}, indent=1)
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
