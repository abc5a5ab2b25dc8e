"""Shared by the multi-node tests: real `vigil watch --role ...` processes, each with its
own configuration file (its node name and status port) on one simulator, one PostgreSQL
database and one repository directory."""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.helpers import FAST_KDF, datastore_dir, free_port, start_vigil  # tests/ is on sys.path
from pyVmomi import vim

from protector.devtools.simtools import create_vm
from repository import Repository
from watcher.session import Session

DB_ENV = "VIGIL_TEST_CLUSTER_DB"
PASSWORD_ENV = "VIGIL_TEST_CLUSTER_VC_PASSWORD"
MIB = 1024 * 1024


def write_policy(root: Path, *, rpo: str = "1h") -> Path:
    pol = root / "policies.d"
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "prod.toml").write_text(
        f"""
[[policy]]
name = "prod"
priority = 10
[policy.select]
folders = ["/DC0/vm/prod/**"]
[policy.schedule]
rpo = "{rpo}"
[policy.retention]
keep_last = 10
"""
    )
    return pol


def write_node_config(
    root: Path, sim: Any, node: str, port: int, *, cluster: str = "", concurrency: int = 2
) -> Path:
    """One node's vigil.toml: the shared repository (created once, as `vigil init`) and
    policies; its own name, port and state directory (as on a host of its own)."""
    if not (root / "repo").exists():
        Repository.init(root / "repo", kdf=FAST_KDF)
    d = root / node
    d.mkdir(parents=True, exist_ok=True)
    hh = (time.localtime().tm_hour + 12) % 24  # the daily prune stays out of the test
    cfg = d / "vigil.toml"
    cfg.write_text(
        f"""
[vcenter]
url = "{sim.url}"
user = "{sim.user}"
password_env = "{PASSWORD_ENV}"
[repository]
path = "{root / "repo"}"
[policies]
path = "{root / "policies.d"}"
[transport]
modes = ["http"]
[limits]
concurrent_backups = {concurrency}
io_threads = 4
[daemon]
status_listen = "127.0.0.1:{port}"
tag_interval = 1
retry_backoff = 0.5
failure_cooldown_max = 2
prune_at = "{hh:02d}:00"
[state]
dir = "{d / "state"}"
[cluster]
node = "{node}"
database_url_env = "{DB_ENV}"
stalled_after_s = 5
shutdown_timeout_s = 10
{cluster}
"""
    )
    os.environ[PASSWORD_ENV] = sim.password
    return cfg


@dataclass
class Node:
    name: str
    role: str
    cfg: Path
    port: int
    log: Path
    proc: Any = None

    def start(self) -> Node:
        self.proc = start_vigil(self.cfg, "watch", "--role", self.role, log=self.log)
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/status.json"
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def page(self) -> str:
        """The HTML status page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=5) as r:
            return r.read().decode()  # type: ignore[no-any-return]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the node's /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def leading(self) -> bool:
        s = self.status()
        return bool(s and s["cluster"]["leading"])

    def running_here(self) -> list[dict[str, Any]]:
        s = self.status()
        return s["cluster"]["worker"].get("running", []) if s else []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.alive():
            self.proc.terminate()
        try:
            return int(self.proc.wait(timeout))
        except Exception:
            self.proc.kill()
            return None

    def events(self, name: str) -> list[dict[str, Any]]:
        """This node's JSON log lines whose event is `name`."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == name:
                out.append(rec)
        return out

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def make_node(root: Path, sim: Any, name: str, role: str, **kw: Any) -> Node:
    port = free_port()
    cfg = write_node_config(root, sim, name, port, **kw)
    return Node(name, role, cfg, port, root / f"{name}.log")


async def create_vm_with_data(
    session: Session, sim: Any, folder: str, name: str, size: int, data_bytes: int, seed: int
) -> tuple[Any, bytes]:
    """A VM whose disk holds `data_bytes` of random data (then zeros) — a backup that
    takes a while, and content to check the restore point against."""
    vm = await create_vm(session, folder, name, disk_kb=size // 1024)
    config = (await session.properties(vm, ["config"]))["config"]
    disk = next(d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    rel = disk.backing.fileName.split("] ", 1)[1]
    flat = datastore_dir(sim) / rel.replace(".vmdk", "-flat.vmdk", 1)
    rng = random.Random(seed)
    data = b"".join(rng.randbytes(min(MIB, data_bytes - o)) for o in range(0, data_bytes, MIB))
    with flat.open("r+b" if flat.exists() else "wb") as f:
        f.write(data)
        f.truncate(size)
    return vm, data + bytes(size - data_bytes)


def points(repo_root: Path) -> dict[str, list[Any]]:
    """VM name → its manifests."""
    out: dict[str, list[Any]] = {}
    for m in Repository.open(repo_root).manifests():
        out.setdefault(m.vm.name, []).append(m)
    return out


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    n = best = 0
    for _, step in edges:
        n += step
        best = max(best, n)
    return best
