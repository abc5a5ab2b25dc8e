"""Running the real `vigil` CLI in a subprocess, as an admin would, against the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_ENV = "VIGIL_TEST_PW"


def vigil(
    *args: str,
    cfg: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    password: str | None = "pass",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `vigil [--config CFG] ARGS`; the password env var is set unless password is None."""
    full_env = dict(os.environ)
    full_env.pop("VIGIL_CONFIG", None)
    full_env.pop(PASSWORD_ENV, None)
    if password is not None:
        full_env[PASSWORD_ENV] = password
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "protector.cli"]
    if cfg is not None:
        cmd += ["--config", str(cfg)]
    return subprocess.run(
        [*cmd, *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(
    tmp_path: Path,
    url: str,
    *,
    vcenter_extra: str = "",
    repo: str = "repo",
    policies: str = "pol",
    extra: str = "",
    with_policies: bool = True,
    init: bool = True,
) -> Path:
    """A vigil.toml for the simulator at `url`, with a catch-all policy in ./pol; `init`:
    create the (unencrypted) repository, as `vigil init --encryption none` would."""
    if init:
        from repository import Repository

        Repository.init(tmp_path / repo)
    if with_policies:
        pol = tmp_path / "pol"
        pol.mkdir(exist_ok=True)
        (pol / "all.toml").write_text(
            '[[policy]]\nname = "all"\npriority = 1\n[policy.select]\nfolders = ["/**"]\n'
            '[policy.schedule]\nrpo = "24h"\n[policy.retention]\nkeep_last = 3\n'
        )
    p = tmp_path / "vigil.toml"
    p.write_text(
        f'[vcenter]\nurl = "{url}"\nuser = "user"\npassword_env = "{PASSWORD_ENV}"\n'
        f"{vcenter_extra}"
        f'[repository]\npath = "{repo}"\n'
        f'[policies]\npath = "{policies}"\n'
        '[transport]\nmodes = ["http"]\n'
        f"{extra}"
    )
    return p


def one_error_line(stderr: str) -> str:
    """The single line an expected failure prints; fails when there is more (a traceback,
    a second line of noise)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith("vigil: "), lines[0]
    return lines[0]
