"""The README's "Using it" block, run as written: only the paths under /etc and /var are
moved into a temporary directory, the vCenter is the simulator (with one vApp), and `web-1`,
the vApp's path, `POINT` and `SET` are replaced by a simulator VM, the simulator's vApp, and
the point and vApp set the backups made."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .clihelp import ROOT


def using_it_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using it", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [ln.split("  #", 1)[0].strip() for ln in block.splitlines() if ln.strip()]


def test_the_block_has_the_commands_an_admin_needs():
    cmds = " ".join(using_it_block())
    for want in ("inventory", "policy check", "backup", "list", "restore", "watch", "status"):
        assert f"vigil {want}" in cmds, want
    assert "mkdir -p /etc/vigil" in cmds.split("cp config.example.toml")[0], (
        "the directory must exist before the config is copied into it"
    )


@pytest.mark.slow
def test_using_it_works_as_written(tmp_path, make_vcsim):
    sim = make_vcsim(args=["-app", "1"])  # DC0_C0_APP0 with two VMs: the README's vApp
    root = tmp_path / "root"
    env = dict(os.environ)
    env.pop("VIGIL_CONFIG", None)

    def localize(line: str) -> str:
        line = line.replace("/etc/vigil", f"{root}/etc/vigil")
        line = line.replace("/var/lib/vigil", f"{root}/var/lib/vigil")
        line = line.replace("/DC0/host/C0/Resources/shop", "/DC0/host/DC0_C0/Resources/DC0_C0_APP0")
        return line.replace("web-1", "DC0_H0_VM0").replace("…", "pass")

    point = vapp_set = ""
    for raw in using_it_block():
        line = localize(raw)
        if line.startswith("export "):
            for assignment in shlex.split(line)[1:]:
                key, _, value = assignment.partition("=")
                env[key] = value.replace("$PWD", str(ROOT)).replace("$PATH", env["PATH"])
            continue
        if line.startswith("cp config.example.toml"):
            subprocess.run(line, shell=True, cwd=ROOT, check=True)
            _point_at_simulator(root / "etc/vigil/vigil.toml", sim.url, root)
            continue
        if not line.startswith("vigil "):
            subprocess.run(line, shell=True, cwd=ROOT, check=True, env=env)
            continue
        line = line.replace("POINT", point).replace("--vapp-set SET", f"--vapp-set {vapp_set}")
        assert shutil.which("vigil", path=env["PATH"]), "vigil is on the PATH the README sets"
        if line == "vigil watch":
            daemon = subprocess.Popen(
                shlex.split(line), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, text=True
            )
            _wait_for_status(env)
            continue
        r = subprocess.run(shlex.split(line), cwd=ROOT, env=env, capture_output=True, text=True)
        if line == "vigil status":
            # 1 = a VM is failing or past its RPO: the baseline policy's window decides when
            # the daemon may start, so that depends on the time of day the test runs.
            assert r.returncode in (0, 1) and "live" in r.stdout, f"{raw}\n{r.stderr}"
            continue
        assert r.returncode == 0, f"{raw}\n{r.stderr}"
        if line.startswith("vigil list --vapps"):
            listed = subprocess.run(
                [*shlex.split(line), "--json"], cwd=ROOT, env=env, capture_output=True, text=True
            )
            vapp_set = json.loads(listed.stdout)[0]["id"]
        elif line.startswith("vigil list"):
            listed = subprocess.run(
                [*shlex.split(line), "--json"], cwd=ROOT, env=env, capture_output=True, text=True
            )
            point = json.loads(listed.stdout)[0]["id"]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert point, "the README's `vigil list` showed the backup's point"
    assert vapp_set, "the README's `vigil list --vapps` showed the vApp set"


def _point_at_simulator(cfg: Path, url: str, root: Path) -> None:
    """The edit the README asks for: [vcenter] url and user (the simulator speaks http)."""
    text = cfg.read_text()
    text = re.sub(r'(?m)^url = ".*"', f'url = "{url}"', text)
    text = re.sub(r'(?m)^user = ".*"', 'user = "user"', text)
    text = text.replace('"/etc/vigil', f'"{root}/etc/vigil')
    text = text.replace('"/var/lib/vigil', f'"{root}/var/lib/vigil')
    port = _free_port()  # not 9273: tests run side by side
    text = text.replace('"127.0.0.1:9273"', f'"127.0.0.1:{port}"')
    cfg.write_text(text)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_status(env: dict[str, str]) -> None:
    """Until the daemon's status page answers (exit 2 means nobody listens yet) and says it
    is connected: the page is served before the first inventory sync, and a `vigil status`
    in between reads NOT CONNECTED."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["vigil", "status", "--json"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if r.returncode in (0, 1) and json.loads(r.stdout).get("healthy"):
            return
        time.sleep(0.5)
    raise AssertionError("the daemon's status page never answered as connected")
