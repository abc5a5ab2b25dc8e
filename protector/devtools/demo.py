"""`vigil demo`: the auto-protect tour on the bundled vCenter simulator.

Start the simulator, write a config and a policy, start the daemon, create a VM with data
and move it into the protected folder, watch it get protected with no manual step,
change 1 % of its disk, take an incremental, restore it as a new VM and compare the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from pyVmomi import vim

from protector.cli.progress import human_bytes
from protector.config import load_config
from protector.daemon.daemon import Daemon
from protector.devtools.simtools import create_folder, create_vm, move_vm
from protector.devtools.simulator import Simulator
from protector.errors import UserError
from repository.admin import init_cmd
from watcher.session import Credentials, Session
from watcher.soap import Endpoint

DISK_MIB = 64
POLICY = """# The demo's protection policy (see docs/policies.md).
[[policy]]
name = "demo-gold"
priority = 10

[policy.select]
folders = ["/DC0/vm/protected/**"]

[policy.schedule]
rpo = "1h"

[policy.trigger]
on_match = "immediate"

[policy.retention]
keep_last = 5
daily = 7
"""


def say(text: str) -> None:
    print(text, flush=True)


def step(n: int, text: str) -> None:
    say(f"\n== {n}. {text}")


def guest_data(size: int, seed: int = 7) -> bytes:
    """A guest-like disk: text, random and zero regions."""
    rng = random.Random(seed)
    out = bytearray(size)
    pos = 0
    while pos < size:
        n = min(size - pos, rng.choice([1, 2, 4]) << 20)
        kind = rng.random()
        if kind < 0.35:
            out[pos : pos + n] = rng.randbytes(n)
        elif kind < 0.7:
            line = b"vigil demo: the quick brown fox jumps over the lazy dog %d\n" % pos
            out[pos : pos + n] = (line * (n // len(line) + 1))[:n]
        pos += n
    return bytes(out)


async def flat_url(session: Session, vm: Any) -> str:
    props = await session.properties(vm, ["config.hardware.device"])
    disk = next(
        d for d in props["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualDisk)
    )
    ds, _, path = disk.backing.fileName[1:].partition("] ")
    flat = path[: -len(".vmdk")] + "-flat.vmdk"
    return f"{session.endpoint.base_url}/folder/{flat}?dcPath=DC0&dsName={ds}"


async def put_disk(session: Session, url: str, data: bytes) -> None:
    cookie = {"Cookie": f"vmware_soap_session={session.session_cookie}"}
    async with aiohttp.ClientSession() as http, http.put(url, data=data, headers=cookie) as r:
        r.raise_for_status()


async def get_disk(session: Session, url: str) -> bytes:
    cookie = {"Cookie": f"vmware_soap_session={session.session_cookie}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=cookie) as r:
        r.raise_for_status()
        return await r.read()


async def wait_until(cond: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise UserError(
                f"demo: {what} did not happen within {timeout:.0f} s; the log above says why"
            )
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def tour(keep: bool) -> int:
    started = time.monotonic()
    step(1, "Starting the bundled vCenter simulator (govmomi vcsim + CBT emulation)")
    sim = Simulator().start()
    workdir = Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    daemon: Daemon | None = None
    task: asyncio.Task[int] | None = None
    session: Session | None = None
    try:
        say(f"   vCenter SDK at {sim.url}; demo files in {workdir} (removed at the end)")
        step(2, "Writing vigil.toml and one policy: everything under /DC0/vm/protected, RPO 1h")
        (workdir / "policies.d").mkdir()
        (workdir / "policies.d" / "demo.toml").write_text(POLICY)
        os.environ["VIGIL_DEMO_PASSWORD"] = sim.password
        (workdir / "vigil.toml").write_text(
            f'[vcenter]\nurl = "{sim.url}"\nuser = "{sim.user}"\n'
            'password_env = "VIGIL_DEMO_PASSWORD"\n'
            '[repository]\npath = "repo"\n[policies]\npath = "policies.d"\n'
            '[transport]\nmodes = ["vddk", "http"]\n'
            '[daemon]\nstatus_listen = "127.0.0.1:0"\ntag_interval = 5\n'
            '[state]\ndir = "state"\n'
        )
        cfg = load_config(workdir / "vigil.toml")
        # As `vigil init --encryption none`: a throw-away demo needs no passphrase.
        init_cmd(cfg.repository.path, None, encryption="none", state_dir=Path(cfg.state_dir))
        say("   repository created unencrypted (demo only; `vigil init` encrypts by default)")
        session = await Session(Endpoint(sim.url), Credentials(sim.user, sim.password)).connect()
        await create_folder(session, "/DC0/vm", "protected")
        await create_folder(session, "/DC0/vm", "staging")

        step(3, "Starting the daemon (vigil watch)")
        daemon = Daemon(cfg)
        task = asyncio.create_task(daemon.run(install_signals=False))
        await wait_until(
            lambda: daemon.ready.is_set() or task.done(), 60, "the daemon's inventory sync"
        )
        if task.done():
            task.result()
        assert daemon.status is not None and daemon.runner is not None
        status_url = f"http://127.0.0.1:{daemon.status.port}/status"
        counts = daemon.status_data()["counts"]
        say(f"   inventory synced: {counts}; status page {status_url}")

        step(4, f"Creating VM app-1 in /DC0/vm/staging with {DISK_MIB} MiB of guest data")
        vm = await create_vm(
            session, "/DC0/vm/staging", "app-1", disk_kb=DISK_MIB * 1024, guest="otherLinux64Guest"
        )
        url = await flat_url(session, vm)
        original = guest_data(DISK_MIB << 20)
        await put_disk(session, url, original)
        say("   written through the datastore HTTP service; staging is not protected")

        step(5, "Moving app-1 into /DC0/vm/protected — no manual backup step")
        moved = time.monotonic()
        await move_vm(session, vm, "/DC0/vm/protected")

        def jobs() -> list[Any]:
            """app-1's finished backup jobs; a failure ends the tour with its error."""
            assert daemon.runner is not None
            recs = [r for r in daemon.runner.history if r.vm_name == "app-1"]
            failed = [r for r in recs if r.outcome == "failed"]
            if failed:
                raise RuntimeError(f"backup of app-1 failed: {failed[-1].error}")
            return [r for r in recs if r.outcome == "success"]

        async def nth_job(n: int, what: str) -> Any:
            await wait_until(lambda: len(jobs()) >= n, 60, what)
            return jobs()[n - 1]

        rec = await nth_job(1, "app-1's first backup")
        say(
            f"   protected {time.monotonic() - moved:.1f} s after the move "
            f"(job reason: {rec.reason}); point {rec.point_id}, read "
            f"{human_bytes(rec.read_bytes)}, stored {human_bytes(rec.stored_bytes)}"
        )

        step(6, "Changing 1 % of the disk and taking an incremental (CBT)")
        changed = bytearray(original)
        rng = random.Random(11)
        for _ in range(max(1, (DISK_MIB << 20) // 100 // 65536)):
            off = rng.randrange(0, (DISK_MIB << 20) - 65536)
            changed[off : off + 65536] = rng.randbytes(65536)
        await put_disk(session, url, bytes(changed))
        daemon.backup_now(vm._moId, "demo: back up now")
        rec2 = await nth_job(2, "app-1's incremental backup")
        say(
            f"   incremental {rec2.point_id}: read {human_bytes(rec2.read_bytes)} of "
            f"{DISK_MIB} MiB ({100 * rec2.read_bytes / (DISK_MIB << 20):.1f} %), stored "
            f"{human_bytes(rec2.stored_bytes)} new"
        )

        step(7, "Restoring the incremental as a new VM app-1-restored, and comparing bytes")
        from protector.context import Context
        from protector.restore import Placement, restore_as_new

        assert daemon.repo is not None
        ctx = Context.create(cfg, session, daemon.repo, None)
        result = await restore_as_new(
            ctx, rec2.point_id, Placement("app-1-restored", folder="/DC0/vm/staging")
        )
        restored_vm = session.moref("VirtualMachine", result.vm_moref)
        restored = await get_disk(session, await flat_url(session, restored_vm))
        restored = restored.ljust(DISK_MIB << 20, b"\0")
        same = hashlib.sha256(restored).digest() == hashlib.sha256(bytes(changed)).digest()
        say(
            f"   {result.vm_name} ({result.vm_moref}): {human_bytes(result.written_bytes)} "
            f"written; disk identical to the source: {'YES' if same else 'NO'}"
        )

        step(8, "Status")
        st = daemon.status_data()
        for v in st["vms"]:
            say(f"   {v['path']:<32} {v['state']:<11} {v['policy'] or '-'}")
        say(f"   status page: {status_url} (also /status.json, /metrics, /healthz)")
        say(f"\nTour finished in {time.monotonic() - started:.0f} s.")
        if keep:
            say("Daemon and simulator keep running; press Ctrl-C to stop.")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        daemon.request_stop()
        async with asyncio.timeout(60):
            await task
        return 0 if same else 1
    finally:
        # Also when a step failed: stop the daemon before its vCenter and files go away.
        if daemon is not None and task is not None and not task.done():
            daemon.request_stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(60):
                    await task
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
