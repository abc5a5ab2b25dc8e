"""Output an admin and a script can both rely on: progress on a terminal only, and --json
output that is JSON alone, never mixed with progress or log lines."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from .clihelp import PASSWORD_ENV, ROOT, vigil, write_config

DISK_MIB = 16


@pytest.fixture
def vm_with_data(vcsim_fresh) -> str:
    """A VM `app-1` whose disk holds DISK_MIB MiB of data, so a backup has bytes to show."""
    import asyncio

    from protector.devtools.demo import flat_url, guest_data, put_disk
    from protector.devtools.simtools import create_vm
    from watcher.session import Credentials, Session
    from watcher.soap import Endpoint

    async def make() -> None:
        async with Session(Endpoint(vcsim_fresh.url), Credentials("user", "pass")) as s:
            vm = await create_vm(s, "/DC0/vm", "app-1", disk_kb=DISK_MIB * 1024)
            await put_disk(s, await flat_url(s, vm), guest_data(DISK_MIB << 20))

    asyncio.run(make())
    return "app-1"


def run_with_tty_stderr(args: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in an admin's shell) and stdout on a
    pipe (as in `vigil ... --json | jq`): (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{PASSWORD_ENV: "pass"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "protector.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    shown = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("the CLI hung")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read()
    return proc.wait(timeout), out, shown.decode(errors="replace")


def test_backup_shows_progress_on_a_tty_and_json_stays_clean(tmp_path, vcsim_fresh, vm_with_data):
    cfg = write_config(tmp_path, vcsim_fresh.url)
    code, out, shown = run_with_tty_stderr(
        ["--config", str(cfg), "--log-level", "info", "backup", vm_with_data, "--json"]
    )
    assert code == 0, shown
    point = json.loads(out)  # the whole of stdout is the one JSON document
    assert point["vm"]["name"] == "app-1" and point["read_bytes"] > 0
    assert f"backup {vm_with_data}:" in shown and "100.0%" in shown and "MiB/s" in shown
    assert "ETA" not in out and "backup.started" not in out.replace('"backup', "")


def test_restore_shows_progress_on_a_tty_and_json_stays_clean(tmp_path, vcsim_fresh, vm_with_data):
    cfg = write_config(tmp_path, vcsim_fresh.url)
    b = vigil("backup", vm_with_data, "--json", cfg=cfg)
    assert b.returncode == 0, b.stderr
    point = json.loads(b.stdout)["id"]
    code, out, shown = run_with_tty_stderr(
        ["--config", str(cfg), "restore", point, "--new-name", "app-1-r", "--verify", "--json"]
    )
    assert code == 0, shown
    result = json.loads(out)
    assert result["vm"]["name"] == "app-1-r" and result["written_bytes"] > 0
    assert f"restore {point}:" in shown and "%" in shown


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path, vcsim_fresh, vm_with_data):
    cfg = write_config(tmp_path, vcsim_fresh.url)
    r = vigil("backup", vm_with_data, "--json", cfg=cfg)
    assert r.returncode == 0
    json.loads(r.stdout)
    assert "ETA" not in r.stderr and "\r" not in r.stderr


@pytest.mark.parametrize("level", ["debug", "info"])
def test_json_output_never_holds_log_lines(tmp_path, vcsim, level):
    cfg = write_config(tmp_path, vcsim.url)
    for args in (["inventory", "--json"], ["policy", "check", "--json"]):
        r = vigil("--log-level", level, *args, cfg=cfg)
        assert r.returncode == 0, r.stderr
        json.loads(r.stdout)  # would fail on a single log line mixed in


def test_export_and_catalog_rebuild_print_json(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url)
    b = vigil("backup", "DC0_H0_VM0", "--json", cfg=cfg)
    assert b.returncode == 0, b.stderr
    point = json.loads(b.stdout)
    out = tmp_path / "disk.raw"
    e = vigil("export", point["id"], "-o", str(out), "--json", cfg=cfg)
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout) == {
        "point": point["id"],
        "disk": point["disks"][0]["key"],
        "file": str(out),
        "data_bytes": 0,
    }
    assert out.exists()
    c = vigil("catalog", "rebuild", "--json", cfg=cfg)
    assert c.returncode == 0, c.stderr
    assert json.loads(c.stdout) == {"restore_points": 1, "pruned": 0}


def test_errors_with_json_are_json_on_stdout_and_one_line_on_stderr(tmp_path, vcsim):
    cfg = write_config(tmp_path, vcsim.url, init=False)
    Path(tmp_path / "repo").mkdir()
    for args in (["list", "--json"], ["verify", "--json"], ["prune", "--json"]):
        r = vigil(*args, cfg=cfg)
        assert r.returncode == 2, (args, r.stderr)
        err = json.loads(r.stdout)["error"]
        assert err["exit_code"] == 2 and err["message"]
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
