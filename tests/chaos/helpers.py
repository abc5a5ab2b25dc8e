"""Shared by the chaos tests: VMs with real data on their disks, the real `vigil` processes,
a controllable network path to vCenter, and the repository-wide integrity checks.

Everything here drives real parts: the bundled simulator, `vigil watch` / `vigil backup` /
`vigil prune` / `vigil verify` as subprocesses, and the repository read back in-process
with the same code `vigil export` uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.helpers import our_snapshots  # tests/ is on sys.path (rootdir)
from pyVmomi import vim

from protector.devtools.simulator import Simulator
from repository import KdfParams, Repository
from watcher.session import Credentials, Session
from watcher.soap import Endpoint
from watcher.tasks import wait_for_task

ROOT = Path(__file__).resolve().parents[2]
FAST_KDF = KdfParams(time_cost=1, memory_kib=1024, parallelism=1)
KIB = 1024
MIB = 1024 * KIB
PASSWORD_ENV = "VIGIL_CHAOS_VC_PASSWORD"
PASSPHRASE_ENV = "VIGIL_CHAOS_REPO_PASSPHRASE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the network path to vCenter --------------------------------------------------------------


class VcenterProxy:
    """A TCP proxy between vigil and the simulator, run on a thread of its own.

    `down()` is vCenter dying: every open connection is reset and new ones are refused;
    `up()` brings it back on the same port with its state intact (the simulator keeps
    running behind it, so its snapshots survive, as a real vCenter's do across a restart).
    `rate` (bytes/s per connection, server to client) slows reads so that a kill or an
    outage lands mid-read; `upload_rate` slows writes (a restore's disk uploads) the same way."""

    def __init__(
        self, target_url: str, rate: float | None = None, upload_rate: float | None = None
    ) -> None:
        hostport = target_url.split("://", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        self.target = (host, int(port))
        self.rate = rate
        self.upload_rate = upload_rate  # bytes/s per connection, client to server
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._refuse: dict[bytes, int] = {}
        self._lose: dict[bytes, int] = {}
        self.refused = 0
        # Bytes sent server to client so far (one int, written by the proxy's thread only):
        # lets a test strike once a disk read is under way, not after a guessed delay.
        self.served = 0

    def refuse(self, method: str, times: int = 1) -> None:
        """The next `times` requests calling SOAP `method` get their connection reset before
        vCenter sees them: vCenter vanishing at exactly that call."""
        self._refuse[f"<{method}".encode()] = times

    def lose_answer(self, method: str, times: int = 1) -> None:
        """The next `times` requests calling SOAP `method` reach vCenter, which carries them
        out, but the connection is reset before its answer gets back: the client cannot
        know what happened."""
        self._lose[f"<{method}".encode()] = times

    def _should_refuse(self, data: bytes) -> bool:
        return self._match(self._refuse, data)

    def _match(self, patterns: dict[bytes, int], data: bytes) -> bool:
        for pattern, left in patterns.items():
            if left > 0 and pattern in data:
                patterns[pattern] = left - 1
                self.refused += 1
                return True
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sdk"

    def up(self) -> VcenterProxy:
        assert self._thread is None, "the proxy is already up"
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
            )
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="vcenter-proxy")
        self._thread.start()
        assert ready.wait(10), "the vCenter proxy did not start"
        return self

    def down(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()  # a reset, not a polite close: vCenter is gone
            self._writers.clear()
            await asyncio.sleep(0)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), loop)
        thread.join(10)
        self._loop = self._thread = self._server = None

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.transport.abort()
            return
        self._writers.update((cw, sw))
        lost = asyncio.Event()

        def refuse(data: bytes) -> bool:
            if self._match(self._lose, data):
                lost.set()  # forwarded; the answer will not get through
                return False
            return self._should_refuse(data)

        try:
            await asyncio.gather(
                self._pump(cr, sw, self.upload_rate, refuse),
                self._pump(sr, cw, self.rate, lost=lost, count=self._count),
            )
        finally:
            for w in (cw, sw):
                self._writers.discard(w)
                w.transport.abort()

    def _count(self, n: int) -> None:
        self.served += n

    @staticmethod
    async def _pump(
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        rate: float | None,
        refuse: Callable[[bytes], bool] | None = None,
        lost: asyncio.Event | None = None,
        count: Callable[[int], None] | None = None,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await r.read(64 * KIB):
                if (refuse is not None and refuse(data)) or (lost is not None and lost.is_set()):
                    w.transport.abort()
                    raise ConnectionResetError("refused by the test")
                w.write(data)
                await w.drain()
                if count is not None:
                    count(len(data))
                if rate:
                    await asyncio.sleep(len(data) / rate)
            if w.can_write_eof():
                w.write_eof()


# -- VMs with data ------------------------------------------------------------------------------


async def connect(sim: Simulator) -> Session:
    return await Session(Endpoint(sim.url), Credentials(sim.user, sim.password)).connect()


async def find_vm(session: Session, name: str) -> Any:
    idx = session.content.searchIndex
    ref = await session.call(idx, "FindByInventoryPath", inventoryPath=f"DC0/vm/{name}")
    assert ref is not None, f"no VM {name} in the simulator"
    return session.client.bind(ref)


async def first_disk(session: Session, vm: Any) -> Any:
    config = (await session.properties(vm, ["config"]))["config"]
    return next(d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def datastore_dir(sim: Simulator, name: str = "LocalDS_0") -> Path:
    dirs = [d for d in sim.datastore_dirs if f"-{name}-" in d.name]
    assert len(dirs) == 1, (name, sim.datastore_dirs)
    return dirs[0]


@dataclass
class DataDisk:
    """One VM's first disk, its `-flat.vmdk` on the simulator's datastore, and every version
    of its content the test wrote (a restore point must equal one of them, byte for byte)."""

    vm_name: str
    flat: Path
    size: int
    versions: list[bytes] = field(default_factory=list)

    @property
    def current(self) -> bytes:
        return self.versions[-1]

    def write(self, data: bytes) -> int:
        """Make `data` the disk's content; returns its version number."""
        assert len(data) == self.size
        tmp = self.flat.with_name(self.flat.name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, self.flat)  # never a half-written disk for a reader to see
        self.versions.append(data)
        return len(self.versions) - 1

    def mutate(self, rng: random.Random) -> int:
        """Rewrite a few random ranges (random bytes, zeros, a copy of another range)."""
        data = bytearray(self.current)
        for _ in range(rng.randint(1, 4)):
            length = rng.choice([4 * KIB, 64 * KIB, 300 * KIB, MIB, MIB + 12 * KIB])
            length = min(length, self.size)
            off = rng.randrange(0, self.size - length + 1)
            kind = rng.random()
            if kind < 0.6:
                data[off : off + length] = rng.randbytes(length)
            elif kind < 0.8:
                data[off : off + length] = bytes(length)
            else:
                src = rng.randrange(0, self.size - length + 1)
                data[off : off + length] = bytes(data[src : src + length])
        return self.write(bytes(data))


async def grow_disk(session: Session, disk: DataDisk, by: int, rng: random.Random) -> int:
    """Grow the VM's disk by `by` bytes (new random data at the end); returns the version."""
    vm = await find_vm(session, disk.vm_name)
    dev = await first_disk(session, vm)
    dev.capacityInKB = (disk.size + by) // KIB
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=dev)
    task = await session.call(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(deviceChange=[change]))
    await wait_for_task(session, task, description=f"grow {disk.vm_name}")
    disk.size += by
    return disk.write(disk.current + rng.randbytes(by))


async def prepare_disk(
    session: Session, sim: Simulator, name: str, size: int, rng: random.Random
) -> DataDisk:
    """Grow the VM's disk to `size` and fill it with random data (some zero areas)."""
    vm = await find_vm(session, name)
    disk = await first_disk(session, vm)
    disk.capacityInKB = size // KIB
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    task = await session.call(vm, "ReconfigVM_Task", spec=vim.vm.ConfigSpec(deviceChange=[change]))
    await wait_for_task(session, task, description=f"grow {name}")
    disk = await first_disk(session, vm)
    assert disk.capacityInKB * KIB == size, (name, disk.capacityInKB)
    rel = disk.backing.fileName.split("] ", 1)[1]
    flat = datastore_dir(sim) / rel.replace(".vmdk", "-flat.vmdk", 1)
    data = bytearray(rng.randbytes(size))
    hole = rng.randrange(0, size - 2 * MIB)
    data[hole : hole + 2 * MIB] = bytes(2 * MIB)  # a hole: zero chunks are not stored
    d = DataDisk(name, flat, size)
    d.write(bytes(data))
    return d


async def snapshots_left(sim_or_session: Simulator | Session, names: Iterable[str]) -> dict:
    """Our (`vigil-backup`) snapshots still on each VM: {name: count}, only VMs with some."""
    own = isinstance(sim_or_session, Simulator)
    session = await connect(sim_or_session) if own else sim_or_session
    try:
        out = {}
        for name in names:
            n = len(await our_snapshots(session, await find_vm(session, name)))
            if n:
                out[name] = n
        return out
    finally:
        if own:
            await session.close()


# -- configuration and processes ----------------------------------------------------------------


def write_config(
    root: Path,
    vc_url: str,
    password: str,
    vm_names: Iterable[str],
    *,
    status_port: int = 0,
    rpo: str = "4s",
    keep_last: int = 1000,
    repo: Path | str = "repo",
    modes: Iterable[str] = ("http",),
    file_datastore: Path | None = None,
    passphrase: str | None = None,
) -> Path:
    """The daemon/CLI configuration; `file_datastore`: LocalDS_0's directory for the `file`
    transport; `passphrase`: an encrypted repository (through PASSPHRASE_ENV)."""
    (root / "policies.d").mkdir(parents=True, exist_ok=True)
    write_policy(root, vm_names, rpo=rpo, keep_last=keep_last)
    cfg = root / "vigil.toml"
    # prune_at: a minute that is not near now, so the daemon's own daily prune stays out.
    hh = (time.localtime().tm_hour + 12) % 24
    cfg.write_text(
        f"""
[vcenter]
url = "{vc_url}"
user = "user"
password_env = "{PASSWORD_ENV}"
[repository]
path = "{repo}"
{f'passphrase_env = "{PASSPHRASE_ENV}"' if passphrase else ""}
[policies]
path = "policies.d"
[transport]
modes = [{", ".join(f'"{m}"' for m in modes)}]
{f'[transport.file.datastores]{chr(10)}LocalDS_0 = "{file_datastore}"' if file_datastore else ""}
[limits]
concurrent_backups = 4
per_host = 4
per_datastore = 4
io_threads = 4
[daemon]
status_listen = "127.0.0.1:{status_port}"
tag_interval = 1
retry_backoff = 0.5
failure_cooldown_max = 2
prune_at = "{hh:02d}:00"
"""
    )
    os.environ[PASSWORD_ENV] = password
    if passphrase:
        os.environ[PASSPHRASE_ENV] = passphrase
    Repository.init(root / repo, passphrase=passphrase, kdf=FAST_KDF)  # as `vigil init`
    return cfg


def write_policy(root: Path, vm_names: Iterable[str], *, rpo: str, keep_last: int) -> None:
    names = ", ".join(f'"{n}"' for n in vm_names)
    (root / "policies.d" / "chaos.toml").write_text(
        f"""
[[policy]]
name = "chaos"
priority = 10
[policy.select]
names = [{names}]
[policy.schedule]
rpo = "{rpo}"
[policy.retention]
keep_last = {keep_last}
"""
    )


def vigil_cmd(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "protector.cli", "--config", str(cfg), "--log-json", *args]


def run_vigil(cfg: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        vigil_cmd(cfg, *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def start_vigil(
    cfg: Path, *args: str, log: Path, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """`prefix`: a command to run vigil under (e.g. setpriv to drop capabilities)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*prefix, *vigil_cmd(cfg, *args)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )


class Daemon:
    """`vigil watch` as the service runs it; its status page tells what it is doing."""

    def __init__(self, cfg: Path, port: int, log: Path, prefix: tuple[str, ...] = ()) -> None:
        self.port = port
        self.log = log
        self.proc = start_vigil(cfg, "watch", log=log, prefix=prefix)

    def status(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/status.json"
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def running_jobs(self) -> int:
        s = self.status()
        return len(s["jobs"]["running"]) if s else 0

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


async def wait_until(
    cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)
    return value


# -- the repository, read back ------------------------------------------------------------------


def points_by_vm(repo: Repository) -> dict[str, list[str]]:
    """VM name -> its committed points, oldest first (by seq)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for m in repo.manifests():
        out.setdefault(m.vm.name, []).append((m.seq, m.point_id))
    return {k: [p for _s, p in sorted(v)] for k, v in out.items()}


def export_bytes(repo: Repository, point_id: str, dest: Path) -> bytes:
    """The point's only disk, exported as `vigil export` does, read back."""
    [disk] = repo.load_manifest(point_id).disks
    dest.unlink(missing_ok=True)
    repo.export_raw(point_id, disk.key, dest)
    data = dest.read_bytes()
    dest.unlink()
    return data


def referenced_chunks(repo: Repository) -> set[str]:
    from repository.codec import chunk_key

    keys: set[str] = set()
    for m in repo.manifests():
        for d in m.disks:
            keys.update(chunk_key(c) for c in repo.load_index(d.index_id).referenced())
    return keys


def stored_chunks(repo: Repository) -> set[str]:
    return {i.key for i in repo.backend.list("chunks/")}


def temp_files(root: Path) -> list[Path]:
    """Debris of interrupted object writes (LocalBackend's temp files)."""
    return list(root.rglob(".tmp-*"))


def age_repository(root: Path, seconds: float) -> None:
    """Move every object's mtime `seconds` into the past: prune's grace period (1 h, for
    writers on other hosts) is then over for everything written so far."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def verify_ok(cfg: Path) -> str:
    v = run_vigil(cfg, "verify", "--read-data", timeout=180)
    assert v.returncode == 0, f"vigil verify --read-data failed:\n{v.stdout}\n{v.stderr[-3000:]}"
    return v.stdout
