"""Start-up of the `vigil` command, whole process (fork to exit), as an admin runs it.

    .venv/bin/python bench/bench_cli_startup.py [--runs 10]

  help      `vigil --help` (parses every command's options, imports none of their code)
  version   `vigil --version` (the distribution's metadata)

(A backup handed to a running daemon, the client's whole cost included, is measured by
bench_backup_cli.py.)

The tree is byte-compiled first, as an installed vigil is. Medians over `--runs`, each
command in turn. tests/protector/test_cli_startup.py asserts what each imports; this
measures what that costs. Writes bench/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_backup_cli import compile_tree  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    compile_tree(ROOT)
    vigil = [sys.executable, "-m", "protector.cli"]
    commands = {"help": [*vigil, "--help"], "version": [*vigil, "--version"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            times[name].append(timed(argv, dict(os.environ)))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, value in med.items():
        print(f"{name:8} {value:.3f} s (median of {args.runs}; {min(times[name]):.3f}-"
              f"{max(times[name]):.3f})")  # fmt: skip
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "cli_startup.json").write_text(
        json.dumps({"median_s": med, "runs_s": times}, indent=1)
    )


if __name__ == "__main__":
    main()
