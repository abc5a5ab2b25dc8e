"""Build and run the bundled vCenter simulator (`vcsim/`), for the demo and the tests.

The binary is built with Debian's Go against Debian's govmomi in GOPATH mode and
cached by a hash of the Go sources (under the checkout's `build/`, else the user's cache
directory), so an edit rebuilds it and an unchanged tree never does. The sources are the
checkout's `vcsim/`, else the copy an installed wheel ships (protector/devtools/vcsim,
package data): `vigil demo` works from a wheel once Go and govmomi are installed, and
says so when they are not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the checkout, when running from one
GOPATH = "/usr/share/gocode"
NEEDS = (
    "the simulator is built from Go sources: install Go and govmomi "
    "(Debian/Ubuntu: apt-get install golang-go golang-github-vmware-govmomi-dev; "
    "in a checkout `make deps` does it)"
)


class SimulatorError(RuntimeError):
    pass


def _sources() -> Path:
    """The checkout's vcsim/ (tests, `make demo`), else the wheel's copy."""
    for src in (ROOT / "vcsim", HERE / "vcsim"):
        if (src / "main.go").is_file():
            return src
    return ROOT / "vcsim"  # build() then says what is missing


VCSIM_SRC = _sources()


def _cache_dir() -> Path:
    if (ROOT / "vcsim").is_dir():
        return ROOT / "build"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vigil"


def source_hash(src: Path = VCSIM_SRC) -> str:
    h = hashlib.sha256()
    for f in sorted(src.glob("*.go")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build(src: Path = VCSIM_SRC, out_dir: Path | None = None) -> Path:
    """Return a vcsim binary for the current sources, building it if needed."""
    if not (src / "main.go").is_file():
        raise SimulatorError(f"the simulator's Go sources are not at {src}; {NEEDS}")
    out_dir = out_dir or _cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / f"vcsim-{source_hash(src)}"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise SimulatorError(f"Go is not installed: {NEEDS}")
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="")
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(
        [go, "build", "-o", str(tmp), "."], cwd=src, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SimulatorError(f"building vcsim failed:\n{proc.stderr}\n({NEEDS})")
    tmp.rename(binary)
    return binary


@dataclass
class Simulator:
    """A running vcsim process. Use as a context manager or call stop()."""

    args: list[str] = field(default_factory=list)
    tls: bool = False
    user: str = "user"
    password: str = "pass"
    binary: Path | None = None
    tmpdir: str | None = None
    url: str = ""
    thumbprint: str = ""
    proc: subprocess.Popen[str] | None = None
    _stderr: list[str] = field(default_factory=list)

    def start(self, timeout: float = 120.0) -> Simulator:
        binary = self.binary or build()
        cmd = [
            str(binary),
            "-exit-on-stdin-eof",
            "-username",
            self.user,
            "-password",
            self.password,
            *self.args,
        ]
        if self.tls:
            cmd.append("-tls")
        env = dict(os.environ)
        if self.tmpdir:
            env["TMPDIR"] = self.tmpdir
        elif Path("/dev/shm").is_dir():
            # Datastore directories on tmpfs: creating large models is ~7x faster.
            env["TMPDIR"] = tempfile.mkdtemp(prefix="vigil-vcsim-", dir="/dev/shm")
            self.tmpdir = env["TMPDIR"]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        result: list[str] = []

        def read_first_lines() -> None:
            assert self.proc and self.proc.stdout
            line = self.proc.stdout.readline()
            result.append(line.strip())
            if self.tls:
                result.append(self.proc.stdout.readline().strip())

        t = threading.Thread(target=read_first_lines, daemon=True)
        t.start()
        t.join(timeout)
        if not result or not result[0].startswith("http"):
            self.stop()
            raise SimulatorError(f"vcsim did not start: {''.join(self._stderr)[-2000:]}")
        self.url = result[0]
        if self.tls and len(result) > 1:
            self.thumbprint = result[1].removeprefix("thumbprint=")
        return self

    def _drain_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-200]

    @property
    def datastore_dirs(self) -> list[Path]:
        """Local directories backing the simulator's datastores (for tests and the demo)."""
        if not self.tmpdir:
            return []
        return sorted(p for p in Path(self.tmpdir).iterdir() if p.is_dir())

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f:
                f.close()
        if self.tmpdir and self.tmpdir.startswith("/dev/shm/vigil-vcsim-"):
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def kill(self) -> None:
        """Kill -9, as a crash would (the tmpdir is kept for a restart test)."""
        if self.proc:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
