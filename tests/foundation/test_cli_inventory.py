"""`vigil inventory` as an admin runs it: the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def vigil(cfg: Path, *args: str, password: str = "pass") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VIGIL_TEST_PW=password)
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def config(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "vigil.toml"
    p.write_text(
        f'[vcenter]\nurl = "{url}"\nuser = "user"\npassword_env = "VIGIL_TEST_PW"\n'
        '[repository]\npath = "repo"\n[policies]\npath = "pol"\n'
    )
    return p


def test_inventory_json_lists_every_vm_with_its_path(tmp_path, vcsim):
    r = vigil(config(tmp_path, vcsim.url), "inventory", "--json")
    assert r.returncode == 0, r.stderr
    vms = json.loads(r.stdout)
    assert [v["path"] for v in vms] == [
        "/DC0/vm/DC0_C0_RP0_VM0",
        "/DC0/vm/DC0_C0_RP0_VM1",
        "/DC0/vm/DC0_H0_VM0",
        "/DC0/vm/DC0_H0_VM1",
    ]
    for v in vms:
        assert v["moref"].startswith("vm-")
        assert len(v["instance_uuid"]) == 36
        assert v["power_state"] == "poweredOn"


def test_inventory_tree_output(tmp_path, vcsim):
    r = vigil(config(tmp_path, vcsim.url), "inventory")
    assert r.returncode == 0, r.stderr
    assert "DC0/" in r.stdout and "DC0_H0_VM0  [on]" in r.stdout
    assert r.stdout.strip().endswith("4 VMs")


def test_wrong_password_exit_2_with_clear_message(tmp_path, vcsim):
    r = vigil(config(tmp_path, vcsim.url), "inventory", password="nope")
    assert r.returncode == 2
    assert f"login failed for user at {vcsim.url}" in r.stderr
    assert "Traceback" not in r.stderr and "nope" not in r.stderr


def test_unreachable_host_exit_2_fast(tmp_path):
    cfg = config(tmp_path, "http://127.0.0.1:9/sdk")
    start = time.monotonic()
    r = vigil(cfg, "inventory")
    assert r.returncode == 2
    assert "cannot reach vCenter at http://127.0.0.1:9/sdk" in r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - start < 15


def test_help_reads_well():
    r = subprocess.run(
        [sys.executable, "-m", "protector.cli", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0
    for cmd in ("inventory", "policy", "backup", "list", "restore", "watch", "status", "demo"):
        assert f"    {cmd}" in r.stdout, cmd


def test_inventory_watch_json_prints_each_event_as_it_happens(tmp_path, vcsim_fresh):
    import asyncio

    from watcher.session import Credentials, Session
    from watcher.soap import Endpoint
    from watcher.tasks import wait_for_task

    env = dict(os.environ, VIGIL_TEST_PW="pass")
    cfg = config(tmp_path, vcsim_fresh.url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protector.cli",
            "--config",
            str(cfg),
            "inventory",
            "--watch",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        initial = [json.loads(proc.stdout.readline()) for _ in range(4)]
        assert {e["event"] for e in initial} == {"added"}

        async def rename() -> None:
            ep = Endpoint(vcsim_fresh.url)
            async with Session(ep, Credentials("user", "pass")) as s:
                vm = s.moref("VirtualMachine", initial[0]["moref"])
                await wait_for_task(s, await s.call(vm, "Rename_Task", newName="renamed-1"))

        asyncio.run(rename())
        line = json.loads(proc.stdout.readline())
        assert line["event"] == "renamed" and line["new_name"] == "renamed-1"
        assert line["moref"] == initial[0]["moref"]
    finally:
        proc.terminate()
        proc.wait(10)
