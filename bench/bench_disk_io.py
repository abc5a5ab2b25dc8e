"""disk_io read throughput: `file` and `http` transports against `cat FILE > /dev/null`.

    .venv/bin/python bench/bench_disk_io.py [--size-gib 4] [--runs 3] [--io-size-mib 4]

One flat disk file of --size-gib random-ish bytes lives in the simulator's datastore
(TMPDIR on /dev/shm, so the "page cache" is always warm). Each run reads the whole disk
through the I/O pool's read pipeline (`IoPool.read_chunks`, io_threads=4): once via the
`file` transport, once via `http` (ranged GETs to the simulator's /folder service), once
via `http-min` (the same client against a bare keep-alive sendfile server in another
process: the client's own speed, without vcsim's per-request work), and once with `cat`.
Prints medians of --runs runs and the ratios to cat; targets: file >= 85 %, http >= 60 %.
Also writes bench/results/disk_io.json. --io-size-mib defaults to 4, the repository's
chunk size, which is what a backup asks the transport for per read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from pyVim.connect import SmartConnect  # noqa: E402

from disk_io import DiskLocation, IoPool, VcenterAccess  # noqa: E402
from disk_io.filedisk import FileDisk  # noqa: E402
from disk_io.httpdisk import HttpDisk  # noqa: E402
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


async def pipeline_read(disk: object, size: int, io_size: int, threads: int) -> int:
    pool = IoPool(threads)
    total = 0
    async with pool.read_chunks(disk, [(0, size)], io_size=io_size, reuse_buffers=True) as chunks:  # type: ignore[arg-type]
        async for _off, data in chunks:
            total += len(data)
    return total


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--io-size-mib", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--http-connections", type=int, default=4)
    ap.add_argument("--serve-minimal", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_minimal:
        serve_minimal(args.serve_minimal)
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    size = int(args.size_gib * GIB)
    io_size = args.io_size_mib * MIB

    with Simulator() as sim:
        ds_dir = sim.datastore_dirs[0]
        (ds_dir / "bench").mkdir()
        flat = ds_dir / "bench" / "bench-flat.vmdk"
        (ds_dir / "bench" / "bench.vmdk").write_text("")
        make_file(flat, size)
        u = urlsplit(sim.url)
        si = SmartConnect(
            protocol=u.scheme,
            host=u.hostname,
            port=u.port,
            user=sim.user,
            pwd=sim.password,
            disableSslCertValidation=True,
        )
        access = VcenterAccess(sim.url, si._stub.cookie, verify=False)
        loc = DiskLocation("DC0", "LocalDS_0", "bench/bench.vmdk", size, "vm-1")

        def via_file() -> None:
            with FileDisk(flat, size) as disk:
                disk.parallel_reads = args.threads
                assert anyio.run(pipeline_read, disk, size, io_size, args.threads) == size

        def via_http() -> None:
            with HttpDisk(loc, access, connections=args.http_connections) as disk:
                assert anyio.run(pipeline_read, disk, size, io_size, args.threads) == size

        minimal = subprocess.Popen(
            [sys.executable, __file__, "--serve-minimal", str(flat)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert minimal.stdout is not None
        min_access = VcenterAccess(f"http://127.0.0.1:{minimal.stdout.readline().strip()}/sdk", "x")

        def via_http_min() -> None:
            with HttpDisk(loc, min_access, connections=args.http_connections) as disk:
                assert anyio.run(pipeline_read, disk, size, io_size, args.threads) == size

        def via_cat() -> None:
            subprocess.run(f"cat {flat} > /dev/null", shell=True, check=True)

        paths = {"cat": via_cat, "file": via_file, "http": via_http, "http-min": via_http_min}
        times: dict[str, list[float]] = {k: [] for k in paths}
        via_cat()  # make sure every page is resident before timing
        try:
            for _ in range(args.runs):
                for name, fn in paths.items():
                    times[name].append(timed(fn))
        finally:
            minimal.kill()
            minimal.wait()
            flat.unlink()

    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: size / med[k] / GIB for k in med}
    targets = {"file": 0.85, "http": 0.60}
    print(
        f"{args.size_gib:g} GiB, {args.runs} runs, io_size {args.io_size_mib} MiB, "
        f"io_threads {args.threads}, http connections {args.http_connections}"
    )
    print(f"{'path':8} {'median s':>9} {'GiB/s':>7} {'vs cat':>7} {'target':>7}")
    for k in times:
        ratio = rate[k] / rate["cat"]
        tgt = f"{targets[k]:.0%}" if k in targets else ""
        ok = "" if k not in targets else ("  ok" if ratio >= targets[k] else "  MISSED")
        print(f"{k:8} {med[k]:9.3f} {rate[k]:7.2f} {ratio:7.1%} {tgt:>7}{ok}")
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
                "args": {k: v for k, v in vars(args).items() if k != "serve_minimal"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
