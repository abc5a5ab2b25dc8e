"""Disk read throughput through the path a backup runs, per transport, against `cat` and
`curl` of the same file, with the CPU each spends.

    .venv/bin/python bench/bench_disk_io.py [--size-gib 4] [--runs 3] [--io-size-mib 1]

One flat disk file of --size-gib random-ish bytes lives in the simulator's datastore
(TMPDIR on /dev/shm, so the "page cache" is always warm). Each run reads the whole disk the
way `vigil backup` does: protector/backup/diskcopy.py's `_copy_slots` (one read per
repository chunk, `limits.io_threads` worker threads through protector/parallel.py's
`map_bounded`), with the repository write left out (a writer that keeps nothing):

  file       the `file` transport (FileDisk);
  http       the `http` transport (HttpDisk: ranged GETs to the simulator's /folder service);
  https      the same over TLS with the certificate pinned by thumbprint, as vigil reaches a
             real vCenter (https only), from a second simulator started with -tls;
  http-min   the http client against a bare keep-alive sendfile server in another process
             (the client's own speed, without vcsim's per-request work);
  cat        `cat FILE > /dev/null`;  curl  `curl -s URL -o /dev/null` of the whole file from
             the simulator (the cookie of our session), when curl is installed.

CPU-s/GiB is user + system time of this process (or the child, for cat and curl) plus the
simulator's or the sendfile server's, per GiB read. Prints medians of --runs runs and the
ratios to cat; targets: file >= 85 %, http >= 60 %. Writes bench/results/disk_io.json.
--io-size-mib defaults to 1, the repository's default chunk size: what a backup reads per
call; --threads defaults to limits.io_threads' default, 8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from pyVim.connect import SmartConnect  # noqa: E402

from disk_io import DiskLocation, VcenterAccess  # noqa: E402
from disk_io.filedisk import FileDisk  # noqa: E402
from disk_io.httpdisk import HttpDisk  # noqa: E402
from disk_io.transport import DiskTransport  # noqa: E402
from protector.backup.diskcopy import _copy_slots  # noqa: E402
from protector.devtools.simulator import Simulator  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


def serve_minimal(flat: Path) -> None:
    """Serve `flat` for HEAD and single-range GETs on 127.0.0.1; print the port; run forever.

    The least a server can do per request (parse a few header lines, one sendfile), so
    `http-min` measures the client; it ignores the URL and the cookie.
    """
    import socket
    import socketserver

    size = flat.stat().st_size

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            fd = os.open(flat, os.O_RDONLY)
            try:
                while True:
                    line = self.rfile.readline(65536)
                    if not line:
                        return
                    method = line.split(b" ", 1)[0]
                    rng = None
                    while (h := self.rfile.readline(65536)) not in (b"\r\n", b""):
                        if h.lower().startswith(b"range: bytes="):
                            a, b = h.split(b"=", 1)[1].strip().split(b"-")
                            rng = (int(a), int(b))
                    if method == b"HEAD" or rng is None:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                        continue
                    first, last = rng
                    n = last - first + 1
                    self.wfile.write(
                        b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n"
                        b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (n, first, last, size)
                    )
                    self.wfile.flush()
                    sent = 0
                    while sent < n:
                        sent += os.sendfile(self.connection.fileno(), fd, first + sent, n - sent)
            finally:
                os.close(fd)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", 0), Handler, bind_and_activate=True) as srv:
        srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        print(srv.server_address[1], flush=True)
        srv.serve_forever()


def make_file(path: Path, size: int) -> None:
    block = os.urandom(64 * MIB)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)


class DiscardingWriter:
    """The disk writer's interface, keeping nothing: the read path alone is measured."""

    def put(self, slot: int, data: bytes) -> None:
        pass


class NoProgress:
    def add(self, n: int) -> None:
        pass


async def backup_read(disk: DiskTransport, size: int, io_size: int, threads: int) -> int:
    """Every slot of the disk read as a backup reads it (diskcopy._copy_slots)."""
    ctx = SimpleNamespace(
        repo=SimpleNamespace(chunk_size=io_size),
        io_threads=threads,
        io_limiter=anyio.CapacityLimiter(threads),
    )
    slots = list(range(-(-size // io_size)))
    return await _copy_slots(ctx, disk, DiscardingWriter(), slots, size, NoProgress())  # type: ignore[arg-type]


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(fn: Callable[[], None], server_pid: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, its children and the server)."""

    def cpu() -> float:
        me = os.times()
        total = me.user + me.system + me.children_user + me.children_system
        return total + (proc_cpu(server_pid) if server_pid else 0.0)

    c, t = cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t, cpu() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--io-size-mib", type=int, default=1)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--http-connections", type=int, default=4)
    ap.add_argument("--serve-minimal", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_minimal:
        serve_minimal(args.serve_minimal)
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    size = int(args.size_gib * GIB)
    io_size = args.io_size_mib * MIB

    with Simulator() as sim, Simulator(tls=True) as tls_sim:
        ds_dir = sim.datastore_dirs[0]
        (ds_dir / "bench").mkdir()
        flat = ds_dir / "bench" / "bench-flat.vmdk"
        (ds_dir / "bench" / "bench.vmdk").write_text("")
        make_file(flat, size)
        # The TLS simulator's datastore gets the same file (a hard link: both are in tmpfs).
        tls_dir = tls_sim.datastore_dirs[0] / "bench"
        tls_dir.mkdir()
        (tls_dir / "bench.vmdk").write_text("")
        os.link(flat, tls_dir / "bench-flat.vmdk")

        def login(s: Simulator) -> str:
            u = urlsplit(s.url)
            si = SmartConnect(
                protocol=u.scheme,
                host=u.hostname,
                port=u.port,
                user=s.user,
                pwd=s.password,
                disableSslCertValidation=True,
            )
            return str(si._stub.cookie)

        cookie = login(sim)
        access = VcenterAccess(sim.url, cookie, verify=False)
        tls_access = VcenterAccess(tls_sim.url, login(tls_sim), thumbprint=tls_sim.thumbprint)
        loc = DiskLocation("DC0", "LocalDS_0", "bench/bench.vmdk", size, "vm-1")

        def read_all(disk: DiskTransport) -> None:
            assert anyio.run(backup_read, disk, size, io_size, args.threads) == size

        def via_file() -> None:
            with FileDisk(flat, size) as disk:
                read_all(disk)

        def via_http() -> None:
            with HttpDisk(loc, access, connections=args.http_connections) as disk:
                read_all(disk)

        def via_https() -> None:
            with HttpDisk(loc, tls_access, connections=args.http_connections) as disk:
                read_all(disk)

        minimal = subprocess.Popen(
            [sys.executable, __file__, "--serve-minimal", str(flat)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert minimal.stdout is not None
        min_access = VcenterAccess(f"http://127.0.0.1:{minimal.stdout.readline().strip()}/sdk", "x")

        def via_http_min() -> None:
            with HttpDisk(loc, min_access, connections=args.http_connections) as disk:
                read_all(disk)

        def via_cat() -> None:
            subprocess.run(f"cat {flat} > /dev/null", shell=True, check=True)

        # The URL HttpDisk reads (the /folder service), fetched whole by curl.
        with HttpDisk(loc, access, connections=1) as probe:
            curl_url = f"{sim.url.rsplit('/sdk', 1)[0]}{probe.url}"
        cookie_value = access.cookie_value()

        def via_curl() -> None:
            jar = f"vmware_soap_session={cookie_value}"
            subprocess.run(["curl", "-sf", "-o", "/dev/null", "-b", jar, curl_url], check=True)

        assert sim.proc and tls_sim.proc
        paths: dict[str, tuple[Callable[[], None], int | None]] = {
            "cat": (via_cat, None),
            "file": (via_file, None),
            "http": (via_http, sim.proc.pid),
            "https": (via_https, tls_sim.proc.pid),
            "http-min": (via_http_min, minimal.pid),
        }
        if shutil.which("curl"):
            paths["curl"] = (via_curl, sim.proc.pid)
        times: dict[str, list[float]] = {k: [] for k in paths}
        cpus: dict[str, list[float]] = {k: [] for k in paths}
        via_cat()  # make sure every page is resident before timing
        try:
            for _ in range(args.runs):
                for name, (fn, server) in paths.items():
                    wall, cpu = measured(fn, server)
                    times[name].append(wall)
                    cpus[name].append(cpu)
        finally:
            minimal.kill()
            minimal.wait()
            flat.unlink()

    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_per_gib = {k: statistics.median(v) / (size / GIB) for k, v in cpus.items()}
    rate = {k: size / med[k] / GIB for k in med}
    targets = {"file": 0.85, "http": 0.60}
    print(
        f"{args.size_gib:g} GiB, {args.runs} runs, read per call {args.io_size_mib} MiB, "
        f"io_threads {args.threads}, http connections {args.http_connections}"
    )
    print(f"{'path':8} {'median s':>9} {'GiB/s':>7} {'vs cat':>7} {'CPU-s/GiB':>9} {'target':>7}")
    for k in times:
        ratio = rate[k] / rate["cat"]
        tgt = f"{targets[k]:.0%}" if k in targets else ""
        ok = "" if k not in targets else ("  ok" if ratio >= targets[k] else "  MISSED")
        print(f"{k:8} {med[k]:9.3f} {rate[k]:7.2f} {ratio:7.1%} {cpu_per_gib[k]:9.2f} {tgt:>7}{ok}")
    out = ROOT / "bench" / "results" / "disk_io.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(),
                "size_bytes": size,
                "runs": times,
                "median_seconds": med,
                "gib_per_s": rate,
                "cpu_seconds": cpus,
                "cpu_seconds_per_gib": cpu_per_gib,
                "args": {k: v for k, v in vars(args).items() if k != "serve_minimal"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
