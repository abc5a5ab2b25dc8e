"""`vigil watch` as a process: signals, crashes, restarts, vCenter outages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .helpers import PASSWORD_ENV, our_snapshots, policy, session_for, wait_for, write_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    def __init__(self, cfg: Path, port: int) -> None:
        self.cfg, self.port = cfg, port
        self.log = open(cfg.parent / f"daemon-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "protector.cli", "--config", str(cfg), "--log-json", "watch"],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/status.json", timeout=2
            ) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def config(tmp_path: Path, sim: Any, port: int) -> Path:
    cfg = write_config(tmp_path, sim, policy("all", 'names = ["DC0_H0_VM0"]'))
    text = cfg.read_text().replace(
        'status_listen = "127.0.0.1:0"', f'status_listen = "127.0.0.1:{port}"'
    )
    cfg.write_text(text)
    return cfg


def running_job(status: dict[str, Any] | None) -> bool:
    return bool(status and status["jobs"]["running"])


async def snapshots_of(sim: Any, name: str) -> list[Any]:
    s = await session_for(sim)
    try:
        idx = s.content.searchIndex
        ref = await s.call(idx, "FindByInventoryPath", inventoryPath=f"DC0/vm/{name}")
        return await our_snapshots(s, s.client.bind(ref))
    finally:
        await s.close()


async def wait_for_snapshot(sim: Any, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await snapshots_of(sim, name):
        assert time.monotonic() < deadline, f"no backup snapshot of {name} after {timeout} s"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_during_backup_removes_snapshot_and_exits_zero(tmp_path, make_vcsim, sig):
    # The snapshot task stays "running" for 4 s: the backup is mid-flight when we signal.
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=4000"])
    port = free_port()
    d = DaemonProcess(config(tmp_path, sim, port), port)
    try:
        await wait_for(lambda: running_job(d.status()), 30, "a running backup")
        # Signalled while vCenter holds our snapshot, so there is something to clean up.
        await wait_for_snapshot(sim, "DC0_H0_VM0", 30)
        start = time.monotonic()
        d.proc.send_signal(sig)
        rc = await asyncio.to_thread(d.proc.wait, 60)
        assert rc == 0, d.output()[-3000:]
        assert time.monotonic() - start < 60
        assert await snapshots_of(sim, "DC0_H0_VM0") == [], "the backup snapshot must be removed"
        assert not list((tmp_path / "repo" / "manifests").glob("*")), "no partial point"
    finally:
        d.stop()


async def test_kill_9_during_backup_then_restart_cleans_up_and_backs_up(tmp_path, make_vcsim):
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=3000"])
    port = free_port()
    cfg = config(tmp_path, sim, port)
    d = DaemonProcess(cfg, port)
    try:
        await wait_for(lambda: running_job(d.status()), 30, "a running backup")
        # Killed once the snapshot exists in vCenter (its task runs 3 s: the daemon still
        # waits for it); "running" on the status page comes a few calls before that.
        await wait_for_snapshot(sim, "DC0_H0_VM0", 30)
        d.proc.kill()
        d.proc.wait()
    finally:
        d.stop()
    assert len(await snapshots_of(sim, "DC0_H0_VM0")) == 1, "the crash left our snapshot"
    d2 = DaemonProcess(cfg, port)
    try:
        await wait_for(
            lambda: (s := d2.status()) and s["counts"].get("ok") == 1, 60, "the VM protected"
        )
        assert await snapshots_of(sim, "DC0_H0_VM0") == []
        assert "daemon.leftover_snapshot" in d2.output()
        # SIGHUP reloads the policies and the daemon goes on.
        d2.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: "daemon.sighup_reload" in d2.output(), 10, "the SIGHUP reload")
        await asyncio.sleep(0.5)
        assert d2.proc.poll() is None and d2.status() is not None
    finally:
        d2.stop()
    assert PASSWORD_ENV in os.environ
    v = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), "verify", "--read-data"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert v.returncode == 0, v.stdout + v.stderr


def log_events(output: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in output.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == event:
            out.append(rec)
    return out


async def test_a_first_backup_stopped_by_a_restart_is_logged_and_queued_again(tmp_path, make_vcsim):
    """Issue 19 item 6: SIGTERM during a VM's first backup cancels the job — the log says
    so, naming the VM and that the backup runs at the next start — and the restarted
    daemon queues the VM (in scope, no point) at once instead of forgetting it."""
    sim = make_vcsim(args=["-task-delay", "CreateSnapshot_Task=3000"])
    port = free_port()
    cfg = config(tmp_path, sim, port)
    d = DaemonProcess(cfg, port)
    try:
        await wait_for(lambda: running_job(d.status()), 30, "a running first backup")
        d.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(d.proc.wait, 60) == 0, d.output()[-3000:]
        cancelled = log_events(d.output(), "job.cancelled")
        assert [c.get("vm") for c in cancelled] == ["DC0_H0_VM0"], d.output()[-3000:]
        assert "next start" in cancelled[0].get("next", ""), cancelled
    finally:
        d.stop()
    assert not list((tmp_path / "repo" / "manifests").glob("*")), "no point yet"
    d2 = DaemonProcess(cfg, port)
    try:
        await wait_for(
            lambda: (s := d2.status()) and s["counts"].get("ok") == 1, 60, "the VM protected"
        )
        [started] = log_events(d2.output(), "job.started")[:1]
        assert started["vm"] == "DC0_H0_VM0"
        queued = [r for r in log_events(d2.output(), "job.queued") if r["vm"] == "DC0_H0_VM0"]
        assert queued and queued[0]["reason"] == "no restore point yet", queued
    finally:
        d2.stop()
