"""Run real operations with distinctive secrets and grep everything vigil shows: stdout
(including --json), stderr logs at debug level, its process arguments and its children.
The vCenter password, the repository passphrase and the session cookie name never appear."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repository import Repository

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Vc-Pw-7c1e!distinct"
WRONG_PASSWORD = "Wrong-Pw-55aa!distinct"
PASSPHRASE = "repo-passphrase-0f9b-distinct"


def config(tmp_path: Path, sim) -> Path:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{sim.url}"\nuser = "{sim.user}"\npassword_env = "VIGIL_SEC_PW"\n'
        '[repository]\npath = "repo"\npassphrase_env = "VIGIL_SEC_PP"\n'
        '[policies]\npath = "pol"\n[transport]\nmodes = ["http"]\n'
    )
    Repository.init(tmp_path / "repo", passphrase=PASSPHRASE)  # as `vigil init`
    return cfg


def env(password: str) -> dict[str, str]:
    return dict(os.environ, VIGIL_SEC_PW=password, VIGIL_SEC_PP=PASSPHRASE)


def proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def run(cfg: Path, *args: str, password: str = PASSWORD) -> tuple[int, str, list[str]]:
    """Run vigil; returns its exit code, all it printed, and what /proc showed of it and
    of any child it started while it ran."""
    cmd = [sys.executable, "-m", "protector.cli", "--log-level", "debug", "--config", str(cfg)]
    # Output to a file, not a pipe nobody reads while the process runs: debug logs past
    # the pipe's 64 KiB would block vigil and this loop would wait for ever.
    with tempfile.TemporaryFile() as sink:
        p = subprocess.Popen(
            [*cmd, *args], cwd=ROOT, env=env(password), stdout=sink, stderr=subprocess.STDOUT
        )
        seen: list[str] = []
        while p.poll() is None:
            seen.append(proc_text(p.pid, "cmdline"))
            for child in children(p.pid):
                seen.append(f"child {child}: " + proc_text(child, "cmdline"))
                seen.append(proc_text(child, "environ"))
            time.sleep(0.02)
        sink.seek(0)
        out = sink.read().decode(errors="replace")
    return p.wait(), out, seen


def assert_clean(text: str) -> None:
    for secret in (PASSWORD, WRONG_PASSWORD, PASSPHRASE, "vmware_soap_session"):
        assert secret not in text, f"{secret!r} leaked:\n{text[-3000:]}"


def test_operations_never_show_a_secret(tmp_path: Path, make_vcsim) -> None:
    sim = make_vcsim(password=PASSWORD)
    cfg = config(tmp_path, sim)
    outputs: list[str] = []
    for args in (
        ("inventory", "--json"),
        ("backup", "DC0_H0_VM0", "--json"),
        ("list", "--json"),
        ("verify", "--json"),
    ):
        code, out, seen = run(cfg, *args)
        assert code == 0, out
        assert not [s for s in seen if s.startswith("child")], "vigil started a child process"
        outputs += [out, *seen]
    code, out, seen = run(cfg, "inventory", "--json", password=WRONG_PASSWORD)
    assert code == 2 and "login failed for user" in out, out
    outputs += [out, *seen]
    assert_clean("\n".join(outputs))
