"""The commands with two vCenters configured (two simulators): a VM name on both is an
error asking for --vcenter; `--vcenter` picks one; `vigil inventory` names each VM's
vCenter; a point taken on one vCenter restores as a new VM on the other, byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protector.devtools.demo import flat_url, get_disk, put_disk
from repository import Repository
from watcher.session import Credentials, Session
from watcher.soap import Endpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["-vm", "1", "-host", "1"]
EAST_UUID = "11111111-1111-4111-8111-111111111111"
WEST_UUID = "22222222-2222-4222-8222-222222222222"


def vigil(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT,
        env=dict(os.environ, VIGIL_T_PW="pass"),
        capture_output=True,
        text=True,
        timeout=180,
    )


def setup(tmp_path: Path, east: str, west: str) -> Path:
    (tmp_path / "policies.d").mkdir()
    (tmp_path / "policies.d" / "p.toml").write_text(
        '[[policy]]\nname = "p"\npriority = 1\nvcenters = ["east"]\n[policy.select]\n'
        'folders = ["/**"]\n[policy.schedule]\nrpo = "24h"\n[policy.retention]\nkeep_last = 2\n'
    )
    cfg = tmp_path / "vigil.toml"
    tables = "".join(
        f'[vcenters.{n}]\nurl = "{u}"\nuser = "user"\npassword_env = "VIGIL_T_PW"\n'
        for n, u in (("east", east), ("west", west))
    )
    cfg.write_text(
        tables + '[repository]\npath = "repo"\n[policies]\npath = "policies.d"\n'
        '[transport]\nmodes = ["http"]\n'
    )
    Repository.init(tmp_path / "repo")
    return cfg


async def login(url: str) -> Session:
    return await Session(Endpoint(url), Credentials("user", "pass")).connect()


async def vm_named(session: Session, name: str) -> object | None:
    ref = await session.call(
        session.content.searchIndex, "FindByInventoryPath", inventoryPath=f"DC0/vm/{name}"
    )
    return session.client.bind(ref) if ref is not None else None


async def test_restore_a_point_from_one_vcenter_into_another(tmp_path, make_vcsim, monkeypatch):
    east = make_vcsim(args=[*SMALL, "-instance-uuid", EAST_UUID])
    west = make_vcsim(args=[*SMALL, "-instance-uuid", WEST_UUID])
    cfg = setup(tmp_path, east.url, west.url)
    data = bytes(range(256)) * 2048  # 512 KiB that are not zeros (the disk holds 1 MiB)
    es = await login(east.url)
    ws = await login(west.url)
    try:
        src = await vm_named(es, "DC0_H0_VM0")
        await put_disk(es, await flat_url(es, src), data)
        original = await get_disk(es, await flat_url(es, src))

        # The name is on both vCenters: a clear error, no guess.
        r = vigil(cfg, "backup", "DC0_H0_VM0")
        assert r.returncode == 2, r.stderr
        assert "'DC0_H0_VM0' is on several vCenters (east, west); pass --vcenter NAME" in (r.stderr)
        r = vigil(cfg, "backup", "DC0_H0_VM0", "--vcenter", "nope")
        assert r.returncode == 2 and "no vCenter named 'nope'" in r.stderr

        r = vigil(cfg, "backup", "DC0_H0_VM0", "--vcenter", "east", "--json")
        assert r.returncode == 0, r.stderr
        point = json.loads(r.stdout)["id"]

        r = vigil(cfg, "list", "--vcenter", "west", "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
        r = vigil(cfg, "list", "DC0_H0_VM0", "--vcenter", "east", "--json")
        assert [p["id"] for p in json.loads(r.stdout)] == [point]

        r = vigil(cfg, "restore", point, "--new-name", "copy", "--vcenter", "west", "--json")
        assert r.returncode == 0, r.stderr
        copy = await vm_named(ws, "copy")
        assert copy is not None and await vm_named(es, "copy") is None
        restored = await get_disk(ws, await flat_url(ws, copy))
        assert restored[: len(original)] == original
        assert not restored[len(original) :].strip(b"\0")  # the rest of the disk: zeros

        # --to-existing onto another vCenter than the point's is refused, saying why.
        r = vigil(cfg, "restore", point, "--to-existing", "--vcenter", "west")
        assert r.returncode == 2 and "was taken on vCenter east, not west" in r.stderr

        r = vigil(cfg, "inventory", "--json")
        assert r.returncode == 0, r.stderr
        paths = {v["path"] for v in json.loads(r.stdout)}
        assert {"east:/DC0/vm/DC0_H0_VM0", "west:/DC0/vm/DC0_H0_VM0", "west:/DC0/vm/copy"} <= (
            paths
        )
        r = vigil(cfg, "backup", "--policy", "p")
        assert r.returncode == 2 and "pass --vcenter NAME" in r.stderr

        # doctor logs in to each vCenter and names its checks after it.
        r = vigil(cfg, "doctor", "--json")
        checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
        for name, sim in (("east", east), ("west", west)):
            assert checks[f"vcenter {name}"]["status"] == "ok"
            assert sim.url in checks[f"vcenter {name}"]["detail"]
            assert f"transport http {name}" in checks

        # `vigil watch` checks every vCenter's credentials before it starts: a wrong
        # password on the second never heals, so it stops at once, naming that table.
        monkeypatch.setenv("VIGIL_T_WRONG", "not-the-password")
        text = cfg.read_text()
        head, _, tail = text.partition("[vcenters.west]")
        cfg.write_text(head + "[vcenters.west]" + tail.replace("VIGIL_T_PW", "VIGIL_T_WRONG", 1))
        r = vigil(cfg, "watch")
        assert r.returncode == 2, r.stderr
        assert "check vcenters.west.user and the password in $VIGIL_T_WRONG" in r.stderr
    finally:
        await es.close()
        await ws.close()
