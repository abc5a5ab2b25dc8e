"""A private PostgreSQL server for tests: its own cluster under a temp dir (initdb), on a
free loopback port, started with pg_ctl and stopped by PID.

Debian's `postgresql` package provides the binaries (under /usr/lib/postgresql/N/bin, not on
PATH). PostgreSQL refuses to run as root, so when the tests run as root the data directory
is chowned to the `postgres` user and initdb/postgres run as that user.

The superuser has a random password and TCP connections must use it (scram-sha-256), so a
test talks to the server the way a cluster node does: with a URL carrying a secret.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*/bin/initdb") if p.parent.parent.name.isdigit()),
        key=lambda p: int(p.parent.parent.name),
    )
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`with PostgresServer() as pg: pg.url("vigil")`. `restart()` keeps data and port."""

    def __init__(self, bindir: Path | None = None, *, database: str = "vigil") -> None:
        found = bindir or pg_bindir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = found
        self.database = database
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.base = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sock"
        self.log = self.base / "server.log"
        self._as_user: str | None = None
        if os.geteuid() == 0:
            self._as_user = "postgres"
        self._initdb()

    # -- lifecycle ---------------------------------------------------------------

    def _run(self, *args: str | Path) -> None:
        subprocess.run(
            [str(a) for a in args],
            check=True,
            capture_output=True,
            user=self._as_user,
            group=self._as_user,
            cwd=self.base,
        )

    def _initdb(self) -> None:
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        self.sockets.mkdir(mode=0o700)
        if self._as_user:
            pw = pwd.getpwnam(self._as_user)
            for p in (self.base, pwfile, self.sockets):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base, 0o700)
        os.chmod(pwfile, 0o600)
        self._run(
            self.bindir / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        pwfile.unlink()

    def start(self) -> PostgresServer:
        if self.port:  # a restart: the clients know this port
            self._start_on_port()
        else:
            # A port chosen free is bound by the postmaster a moment later; a connect()
            # meanwhile may take it. Nobody knows the port yet: try another one then.
            for attempt in range(3):
                self.port = free_port()
                try:
                    self._start_on_port()
                    break
                except subprocess.CalledProcessError:
                    log = self.log.read_text(errors="replace") if self.log.exists() else ""
                    if attempt == 2 or "Address already in use" not in log:
                        raise
        self._wait_ready()
        self._ensure_database()
        return self

    def _start_on_port(self) -> None:
        opts = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.sockets}",
                "-c shared_preload_libraries=pg_stat_statements",
                "-c max_connections=200",
                # Test data is throw-away: skip the fsyncs that make a 2-core box crawl.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        self._run(
            self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "start"
        )

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _ensure_database(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: abort sessions, checkpoint, exit) by PID; SIGKILL if it
        lingers."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        while _alive(pid):
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- addresses ---------------------------------------------------------------

    def url(self, database: str | None = None) -> str:
        return (
            f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/"
            f"{database or self.database}"
        )

    def new_database(self, name: str) -> str:
        """A fresh empty database on this server (for a test that wants its own queue)."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child counts as gone; pg_ctl daemonizes postgres, so it is not our child.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
