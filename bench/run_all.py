"""Run every benchmark in turn (what `make bench` does); each prints its own table and
writes bench/results/<name>.json. Benchmarks are timing goals, never pass/fail tests.

    .venv/bin/python bench/run_all.py [--only policies,repository,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "policies",
    "repository",
    "disk_io",
    "e2e",
    "backup_cli",
    "watcher",
    "vm_lookup",
    "daemon",
    "metrics",
    "cluster",
    "files",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="", help="comma-separated subset of " + ",".join(ORDER))
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or ORDER
    failed = []
    for name in names:
        print(f"\n##### bench_{name}", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")], cwd=HERE.parent)
        print(f"##### bench_{name}: exit {rc} after {time.monotonic() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"benchmarks that did not complete: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
