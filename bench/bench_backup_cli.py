"""The fixed cost of one backup (issue 18 part 3): `vigil backup` as a whole process against
restic and borg on the same flat file, in the same run.

    .venv/bin/python bench/bench_backup_cli.py [--size 1G] [--runs 3] [--work /dev/shm/...]

Workload: ../shared/bench/mkimage.py's guest-like image (seed 1) copied into the simulator
VM's `-flat.vmdk` (file transport, datastore and repositories in tmpfs), then `--mutate 1`
(seed 2) for the second backup. Per run, each tool starts from an empty repository:

  full          vigil: `vigil backup VM` (a new repository: every allocated block);
                restic: `restic backup FLAT`; borg: `borg create FLAT`
  incr_nocbt    after the 1 % mutation, a second backup that reads the whole disk and stores
                what is new: vigil `backup VM` with the VM's CBT off and a policy that keeps
                it off (enable_cbt = false; the previous point's chunks are reused unread,
                as restic and borg reuse theirs), restic and borg again
  full_verify   vigil only: `backup VM --full`, the same read trusting nothing stored (each
                reused chunk is read back and its AES-GCM tag checked, damage healed)
  incr_cbt      vigil only: a third backup after another 1 % mutation through CBT
  daemon job    the daemon's per-job overhead: the same VM (a policy covers it) backed up
                by the daemon's job runner in-process into a fresh repository (a full
                read): time from the daemon's first complete inventory to the job's start,
                and the job's duration, beside the CLI's full backup

Settings: all three encrypted. vigil runs twice, each repository made by `vigil init`:
"vigil" as config.example.toml sets it up, with a host key (repository.key_file: the
repository opens through the host's key slot, HKDF, no passphrase needed on the host),
and "passphrase" with only the passphrase (its Argon2id slot, t=3, 64 MiB, p=2, ~0.4
CPU-s per process). A third, "handoff", is the same command on a host where `vigil watch`
runs with that configuration (started once per run, its policy covering the VM with a
window 12 hours away, so it backs up only when asked): `vigil backup VM` hands the job
over the daemon's control socket (docs/control-socket.md) and waits for it; its time is
the command's, fork to exit, and its CPU time only the command's own (the daemon's is not
counted: it is a process of its own). restic: its calibrated scrypt; borg: repokey (PBKDF2).
borg: `--chunker-params fixed,4194304 --compression zstd,1`; restic `--compression auto`
(zstd fastest, restic's only non-max level). vigil: its default chunk size and zstd level.
Both vigil checkouts are byte-compiled first, as an installed vigil is (compile_tree).
Each time is the whole process (fork to exit) measured here; for vigil the per-phase
figures come from its `--log-level debug` `phase` lines, including the simulator's
CreateSnapshot (it hashes the whole flat file to emulate CBT, which ESXi does not do).
bench_daemon.py has the daemon's event -> job start latency over many VM moves.

Each tool's CPU time (user + system, its process and children) is reported beside the
wall time: on this shared 2-core machine the wall time swings with other jobs, the CPU
time much less (vigil spreads its work over threads, restic too; borg uses one core).
The vigil checkouts take turns going first. Writes bench/results/backup_cli.json.
Goals: vigil >= 1.5x the faster peer (full and incr_nocbt), repository size <= 1.05x
restic's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simvm import fresh_flat_disk, set_cbt  # noqa: E402

from protector.devtools.simulator import Simulator  # noqa: E402
from repository import Repository  # noqa: E402
from watcher.session import Credentials, Session  # noqa: E402
from watcher.soap import Endpoint  # noqa: E402

# ../shared from the main checkout, ../../shared from a worktree under wt/; or $VIGIL_MKIMAGE.
MKIMAGE = (
    Path(os.environ["VIGIL_MKIMAGE"])
    if "VIGIL_MKIMAGE" in os.environ
    else next(
        (p for p in (r / "shared" / "bench" / "mkimage.py" for r in ROOT.parents) if p.exists()),
        ROOT.parent / "shared" / "bench" / "mkimage.py",
    )
)
PASS = "bench-passphrase"
VM_NAME = "DC0_H0_VM0"


def sh(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, str]:
    """Runs cmd to completion; (wall seconds, stderr)."""
    wall, _cpu, err = timed(cmd, env, cwd)
    return wall, err


def timed(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, float, str]:
    """Runs cmd to completion; (wall seconds, CPU seconds (user + system) of the process
    and its children, stderr). The CPU time hardly moves with the load of other work on
    the machine (it shares 2 cores with other jobs), the wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))}: exit {p.returncode}\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.stderr


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def mkimage(path: Path, *args: str) -> None:
    subprocess.run([sys.executable, MKIMAGE, path, *args], check=True, stdout=subprocess.DEVNULL)


async def prepare_vm(sim: Simulator, size: int) -> Path:
    """Grows the VM's first disk to `size`, CBT off; returns its flat file."""
    session = await Session(Endpoint(sim.url), Credentials(sim.user, sim.password)).connect()
    try:
        _, rel = await fresh_flat_disk(session, VM_NAME, size)
    finally:
        await session.close()
    ds_dir = next(d for d in sim.datastore_dirs if "-LocalDS_0-" in d.name)
    return ds_dir / rel


async def cbt(sim: Simulator, on: bool) -> None:
    session = await Session(Endpoint(sim.url), Credentials(sim.user, sim.password)).connect()
    try:
        await set_cbt(session, VM_NAME, on)
    finally:
        await session.close()


def phases(stderr: str) -> dict[str, float]:
    """vigil's `phase` debug lines (protector/phases.py): {phase: seconds}."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        if '"phase"' not in line:
            continue
        rec = json.loads(line)
        if rec.get("event") == "phase":
            out[rec["phase"]] = out.get(rec["phase"], 0.0) + rec["seconds"]
    return out


def compile_tree(code: Path) -> None:
    """Byte-compile a checkout's packages, as installing vigil does (pip writes the .pyc
    files; borg from the distribution has them too). Without them every `vigil` process
    compiles each module it imports from source again when the environment sets
    PYTHONDONTWRITEBYTECODE (this build machine's does): measured 1.6-2.8 s of start-up
    under load instead of well under 1 s."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "-x",
            r"/(tests|\.venv|build)/",
            code,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def vigil_setup(
    sim: Simulator,
    work: Path,
    name: str,
    code: Path,
    host_key: bool,
    policies: Path | None = None,
    state: Path | None = None,
) -> tuple[list[str], Path, dict[str, str]]:
    """(argv of `vigil backup VM`, its repository, its environment) for vigil from `code`
    (this checkout, or --baseline's) with a fresh repository of its own, made by `vigil
    init`; `host_key`: with repository.key_file, as config.example.toml has it."""
    ds_dir = next(d for d in sim.datastore_dirs if "-LocalDS_0-" in d.name)
    repo, key_file = work / f"{name}-repo", work / f"{name}.key"
    shutil.rmtree(repo, ignore_errors=True)
    key_file.unlink(missing_ok=True)
    policies = policies or work / "policies"
    policies.mkdir(exist_ok=True)
    cfgfile = work / f"{name}.toml"
    cfgfile.write_text(
        f'[vcenter]\nurl = "{sim.url}"\nuser = "{sim.user}"\npassword_env = "VIGIL_BENCH_PW"\n'
        f'[repository]\npath = "{repo}"\npassphrase_env = "VIGIL_BENCH_PASS"\n'
        + (f'key_file = "{key_file}"\n' if host_key else "")
        + f'[policies]\npath = "{policies}"\n'
        f'[transport]\nmodes = ["file"]\n[transport.file.datastores]\nLocalDS_0 = "{ds_dir}"\n'
        + (f'[state]\ndir = "{state}"\n[daemon]\nstatus_listen = "127.0.0.1:0"\n' if state else "")
    )
    compile_tree(code)
    argv = [sys.executable, "-m", "protector.cli", "--config", str(cfgfile)]
    env = {"PYTHONPATH": str(code)}
    init_env = dict(os.environ, VIGIL_BENCH_PASS=PASS, VIGIL_BENCH_PW=sim.password, **env)
    sh([*argv, "init"], init_env, cwd=code)
    argv += ["--log-level", "debug", "--log-json", "backup", VM_NAME]
    return argv, repo, env


def handoff_policy(policies: Path, *, cbt: bool) -> None:
    """The daemon's policy for the VM: backups only when asked (its window 12 hours away,
    no trigger on coming into scope), CBT kept off for the no-CBT incremental."""
    start = (datetime.now() + timedelta(hours=12)).strftime("%H:%M")
    end = (datetime.now() + timedelta(hours=12, minutes=1)).strftime("%H:%M")
    (policies / "main.toml").write_text(
        f'[[policy]]\nname = "asked"\npriority = 10\n[policy.select]\nnames = ["{VM_NAME}"]\n'
        f'[policy.schedule]\nrpo = "24h"\nwindow = "{start}-{end}"\n'
        '[policy.trigger]\non_match = "schedule"\n[policy.retention]\nkeep_last = 9\n'
        + ("" if cbt else "[policy.backup]\nenable_cbt = false\n")
    )


class HandoffDaemon:
    """`vigil watch` with the "handoff" configuration, so that vigil's `backup VM` hands
    its job over (docs/control-socket.md); stopped with SIGTERM."""

    def __init__(self, argv: list[str], env: dict[str, str], state: Path) -> None:
        cfg = argv[argv.index("--config") + 1]
        self.sock = state / "control.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "protector.cli", "--config", cfg, "watch"],
            env=env,
            cwd=env["PYTHONPATH"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("vigil watch did not open its control socket")
            time.sleep(0.05)
        # Settled, as a long-running daemon is when an admin runs a command: its first
        # inventory read, tag poll and leftover sweep done (requests before the first are
        # declined), its CPU still for half a second.
        while True:
            before = self.cpu()
            time.sleep(0.5)
            if self.cpu() - before < 0.02 or time.monotonic() > deadline:
                break

    def cpu(self) -> float:
        """The daemon's CPU seconds so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


async def daemon_job(sim: Simulator, work: Path) -> dict[str, Any]:
    """The same VM backed up by `vigil watch`'s machinery in-process (a policy covers it, a
    fresh repository, so the daemon starts a full backup once its inventory is ready):
    ready -> job started, and the job's own duration (no process start-up or login)."""
    from protector.config import load_config
    from protector.daemon.daemon import Daemon

    ds_dir = next(d for d in sim.datastore_dirs if "-LocalDS_0-" in d.name)
    repo, pol = work / "daemon-repo", work / "daemon-policies"
    shutil.rmtree(repo, ignore_errors=True)
    pol.mkdir(exist_ok=True)
    (pol / "main.toml").write_text(
        f'[[policy]]\nname = "bench"\npriority = 10\n[policy.select]\nnames = ["{VM_NAME}"]\n'
        '[policy.schedule]\nrpo = "24h"\n[policy.retention]\nkeep_last = 3\n'
    )
    cfgfile = work / "daemon.toml"
    cfgfile.write_text(
        f'[vcenter]\nurl = "{sim.url}"\nuser = "{sim.user}"\npassword_env = "VIGIL_BENCH_PW"\n'
        f'[repository]\npath = "{repo}"\npassphrase_env = "VIGIL_BENCH_PASS"\n'
        f'[policies]\npath = "{pol}"\n'
        f'[transport]\nmodes = ["file"]\n[transport.file.datastores]\nLocalDS_0 = "{ds_dir}"\n'
        '[daemon]\nstatus_listen = "127.0.0.1:0"\n'
    )
    Repository.init(repo, passphrase=PASS)
    os.environ.update(VIGIL_BENCH_PW=sim.password, VIGIL_BENCH_PASS=PASS)
    daemon = Daemon(load_config(cfgfile))
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await asyncio.wait_for(daemon.ready.wait(), 300)
        ready = time.time()
        assert daemon.runner is not None
        while True:
            done = [r for r in daemon.runner.history if r.vm_name == VM_NAME and r.finished]
            if done:
                rec = done[0]
                break
            if task.done():
                task.result()
                raise SystemExit("the daemon stopped before backing up the VM")
            await asyncio.sleep(0.01)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 120)
    if rec.outcome != "success":
        raise SystemExit(f"daemon job: {rec.outcome}: {rec.error}")
    assert rec.finished is not None
    return {
        "daemon_ready_to_job_s": rec.started - ready,
        "daemon_job_s": rec.finished - rec.started,
    }


def one_run(
    sim: Simulator, work: Path, base: Path, size: int, baseline: Path | None, swap: bool = False
) -> dict[str, Any]:
    """One run of every backup; `swap`: the baseline checkout goes first this time (runs
    alternate, so neither gets the warmer page cache or the quieter moment every time)."""
    flat = asyncio.run(prepare_vm(sim, size))
    rrepo, brepo = work / "restic-repo", work / "borg-repo"
    for p in (rrepo, brepo):
        shutil.rmtree(p, ignore_errors=True)
    env = dict(
        os.environ,
        VIGIL_BENCH_PW=sim.password,
        VIGIL_BENCH_PASS=PASS,
        RESTIC_PASSWORD=PASS,
        BORG_PASSPHRASE=PASS,
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
    )
    handoff_state, handoff_pol = work / "handoff-state", work / "handoff-policies"
    shutil.rmtree(handoff_state, ignore_errors=True)
    handoff_state.mkdir(mode=0o700)
    handoff_pol.mkdir(exist_ok=True)
    handoff_policy(handoff_pol, cbt=True)
    vigils = {
        "vigil": vigil_setup(sim, work, "vigil", ROOT, host_key=True),
        "passphrase": vigil_setup(sim, work, "passphrase", ROOT, host_key=False),
        "handoff": vigil_setup(
            sim, work, "handoff", ROOT, True, policies=handoff_pol, state=handoff_state
        ),
    }
    if baseline is not None:
        vigils["baseline"] = vigil_setup(sim, work, "baseline", baseline, host_key=False)
    sh(["restic", "init", "--repository-version", "2", "-r", str(rrepo)], env)
    sh(["borg", "init", "-e", "repokey", str(brepo)], env)
    restic = ["restic", "-r", str(rrepo), "backup", "--compression", "auto", "-q", str(flat)]

    def borg(name: str) -> list[str]:
        return [
            "borg",
            "create",
            "--chunker-params",
            "fixed,4194304",
            "--compression",
            "zstd,1",
            f"{brepo}::{name}",
            str(flat),
        ]

    argv, _repo, venv = vigils["handoff"]
    daemon = HandoffDaemon(argv, {**env, **venv}, handoff_state)

    def each_vigil(kind: str, extra: list[str]) -> None:
        items = list(vigils.items())
        for name, (argv, _repo, venv) in items[::-1] if swap else items:
            # cwd: `python -m` puts the current directory first on sys.path
            code = Path(venv["PYTHONPATH"])
            before = daemon.cpu()
            wall, cpu, err = timed([*argv, *extra], {**env, **venv}, cwd=code)
            # The daemon's CPU meanwhile: its job for "handoff"; for the others, what it
            # took from them (its idle watch), which must stay near zero.
            out[f"{name}_{kind}_daemon_cpu_s"] = daemon.cpu() - before
            if name == "handoff" and "backup.handed_to_daemon" not in err:
                raise SystemExit(f"the daemon did not take the {kind} backup:\n{err[-3000:]}")
            out[f"{name}_{kind}_s"], out[f"{name}_{kind}_cpu_s"] = wall, cpu
            out[f"{name}_{kind}_phases"] = phases(err)

    def peer(name: str, kind: str, cmd: list[str]) -> None:
        before = daemon.cpu()
        out[f"{name}_{kind}_s"], out[f"{name}_{kind}_cpu_s"], _ = timed(cmd, env)
        out[f"{name}_{kind}_daemon_cpu_s"] = daemon.cpu() - before

    out: dict[str, Any] = {}
    shutil.copyfile(base, flat)
    try:
        return steps(sim, work, flat, vigils, daemon, each_vigil, peer, restic, borg, out)
    finally:
        daemon.stop()


def steps(
    sim: Simulator,
    work: Path,
    flat: Path,
    vigils: dict[str, Any],
    daemon: HandoffDaemon,
    each_vigil: Any,
    peer: Any,
    restic: list[str],
    borg: Any,
    out: dict[str, Any],
) -> dict[str, Any]:
    """The backups of one run, in order (the daemon of the "handoff" vigil running)."""
    rrepo, brepo = work / "restic-repo", work / "borg-repo"
    each_vigil("full", [])
    peer("restic", "full", restic)
    peer("borg", "full", borg("full"))
    mkimage(flat, "--mutate", "1", "--seed", "2")
    # No CBT: the VM's tracking off and a policy that keeps it off (enable_cbt = false), so
    # vigil reads every allocated block and stores what the previous point lacks.
    asyncio.run(cbt(sim, False))
    nocbt = work / "policies" / "nocbt.toml"
    nocbt.write_text(
        f'[[policy]]\nname = "nocbt"\npriority = 10\n[policy.select]\nnames = ["{VM_NAME}"]\n'
        '[policy.schedule]\nrpo = "24h"\n[policy.retention]\nkeep_last = 9\n'
        "[policy.backup]\nenable_cbt = false\n"
    )
    handoff_policy(work / "handoff-policies", cbt=False)
    daemon.reload()
    each_vigil("incr_nocbt", [])
    peer("restic", "incr_nocbt", restic)
    peer("borg", "incr_nocbt", borg("incr"))
    # Sizes after the same two backups (before vigil's later points).
    for name, (_argv, repo, _venv) in vigils.items():
        out[f"{name}_repo_bytes"] = du(repo)
    out["restic_repo_bytes"] = du(rrepo)
    out["borg_repo_bytes"] = du(brepo)
    out["repo_vs_restic"] = out["vigil_repo_bytes"] / out["restic_repo_bytes"]
    # `--full`: the same read, trusting nothing stored (every reused chunk checked).
    each_vigil("full_verify", ["--full"])
    nocbt.unlink()
    handoff_policy(work / "handoff-policies", cbt=True)
    daemon.reload()
    each_vigil("cbt_on", [])  # untimed: turns CBT back on, the changeId the next one asks
    mkimage(flat, "--mutate", "1", "--seed", "3")
    each_vigil("incr_cbt", [])
    out.update(asyncio.run(daemon_job(sim, work)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/dev/shm/vigil-bench-cli"))
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another vigil checkout (e.g. main's) run beside this one, same VM, same run",
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = args.work / f"base-{args.size}.img"
    if not base.exists():
        mkimage(base, "--size", args.size, "--seed", "1")
    size = base.stat().st_size
    runs: list[dict[str, Any]] = []
    simdir = args.work / "vcsim"
    shutil.rmtree(simdir, ignore_errors=True)
    simdir.mkdir()
    with Simulator(tmpdir=str(simdir)) as sim:
        for i in range(args.runs):
            r = one_run(sim, args.work, base, size, args.baseline, swap=i % 2 == 1)
            runs.append(r)
            flat = {k: round(v, 3) for k, v in r.items() if isinstance(v, (int, float))}
            print(f"run {i + 1}: {json.dumps(flat)}", file=sys.stderr, flush=True)
    shutil.rmtree(simdir, ignore_errors=True)
    names = ["vigil", "passphrase", "handoff", *(["baseline"] if args.baseline else [])]
    for r in runs:
        for kind in ("full", "incr_nocbt"):
            for unit in ("s", "cpu_s"):
                peer = min(r[f"restic_{kind}_{unit}"], r[f"borg_{kind}_{unit}"])
                for name in names:
                    ratio = peer / r[f"{name}_{kind}_{unit}"]
                    r[f"{name}_{kind}_{'vs_faster_peer' if unit == 's' else 'cpu_vs_peer'}"] = ratio
    med = {
        k: statistics.median(r[k] for r in runs)
        for k, v in runs[0].items()
        if not isinstance(v, dict)
    }
    med_phases = {
        f"{name}_{kind}": {
            ph: statistics.median(r[f"{name}_{kind}_phases"].get(ph, 0.0) for r in runs)
            for ph in runs[0][f"{name}_{kind}_phases"]
        }
        for name in names
        for kind in ("full", "incr_nocbt", "full_verify", "incr_cbt")
    }
    print(f"\n{size / 2**20:.0f} MiB guest-like image, whole process, median of {args.runs} runs\n")
    print(
        "| backup | tool | seconds | vs faster peer (goal >= 1.5x) | CPU s | CPU vs leaner peer |"
    )
    print("|---|---|---|---|---|---|")
    for kind in ("full", "incr_nocbt", "full_verify", "incr_cbt"):
        for name in [*names, "restic", "borg"]:
            if f"{name}_{kind}_s" not in med:
                continue
            ratio = med.get(f"{name}_{kind}_vs_faster_peer")
            cpu_ratio = med.get(f"{name}_{kind}_cpu_vs_peer")
            print(
                f"| {kind} | {name} | {med[f'{name}_{kind}_s']:.2f} | "
                f"{f'{ratio:.2f}x' if ratio else '-'} | {med[f'{name}_{kind}_cpu_s']:.2f} | "
                f"{f'{cpu_ratio:.2f}x' if cpu_ratio else '-'} |"
            )
    sizes = ", ".join(
        f"{n} {med[f'{n}_repo_bytes'] / 2**20:.1f}" for n in [*names, "restic", "borg"]
    )
    print(
        f"\nrepository MiB after full + incr_nocbt: {sizes}; "
        f"vigil/restic {med['repo_vs_restic']:.3f} (goal <= 1.05)"
    )
    print(
        "\nthe handoff daemon's CPU seconds during each command (its job for handoff, what it "
        "took from the others): "
        + ", ".join(
            f"{k.removesuffix('_daemon_cpu_s')} {v:.2f}"
            for k, v in med.items()
            if k.endswith("_daemon_cpu_s")
        )
    )
    for kind, ph in med_phases.items():
        print(f"{kind} phases: " + ", ".join(f"{k} {v:.3f}" for k, v in ph.items()))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "backup_cli.json").write_text(
        json.dumps({"runs": runs, "median": med, "median_phases": med_phases}, indent=1)
    )


if __name__ == "__main__":
    main()
