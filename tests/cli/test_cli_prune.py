"""`vigil prune` end to end: retention applied to real points, and damage reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from repository import Repository

ROOT = Path(__file__).resolve().parents[2]

POLICY = """
[[policy]]
name = "keep2"
priority = 10
[policy.select]
names = ["DC0_H0_VM0"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 2
"""


def vigil(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protector.cli", "--config", str(cfg), *args],
        cwd=ROOT,
        env=dict(os.environ, VIGIL_TEST_PW="pass"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def setup(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        f'[vcenter]\nurl = "{url}"\nuser = "user"\npassword_env = "VIGIL_TEST_PW"\n'
        '[repository]\npath = "repo"\n[policies]\npath = "pol"\n[transport]\nmodes = ["http"]\n'
    )
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "p.toml").write_text(POLICY)
    Repository.init(tmp_path / "repo")  # as `vigil init --encryption none`
    return cfg


def points(cfg: Path) -> list[str]:
    r = vigil(cfg, "list", "DC0_H0_VM0", "--json")
    assert r.returncode == 0, r.stderr
    return [p["id"] for p in json.loads(r.stdout)]


def test_prune_keeps_what_the_policy_says_and_reports_damage(tmp_path, vcsim_fresh):
    cfg = setup(tmp_path, vcsim_fresh.url)
    for _ in range(3):
        b = vigil(cfg, "backup", "DC0_H0_VM0", "--json")
        assert b.returncode == 0, b.stderr
    before = points(cfg)
    assert len(before) == 3

    dry = vigil(cfg, "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    doomed = [d["point_id"] for d in json.loads(dry.stdout)["decisions"] if d["delete"]]
    assert len(doomed) == 1 and points(cfg) == before  # a dry run changes nothing

    run = vigil(cfg, "prune", "--json")
    assert run.returncode == 0, run.stderr
    assert sorted(points(cfg)) == sorted(set(before) - set(doomed))
    assert vigil(cfg, "verify", "--read-data").returncode == 0

    # An unreadable manifest: its point is kept, the sweep keeps every index, exit 1.
    manifest = sorted(p for p in (tmp_path / "repo" / "manifests").rglob("*") if p.is_file())[-1]
    manifest.chmod(0o600)
    manifest.write_bytes(b"\0garbage")
    damaged = vigil(cfg, "prune", "--json")
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    out = json.loads(damaged.stdout)
    assert out["sweep_limited"] and "vigil verify" in out["sweep_limited"]
    assert not any(d["delete"] for d in out["decisions"])


def test_prune_explains_which_rule_kept_each_point(tmp_path, vcsim_fresh):
    """Issue 19 item 6: each kept point names the retention rule that kept it (keep_last
    with its rank, or a daily/weekly/... bucket), each deleted one why no rule did."""
    cfg = setup(tmp_path, vcsim_fresh.url)
    for _ in range(3):
        assert vigil(cfg, "backup", "DC0_H0_VM0").returncode == 0
    newest_first = points(cfg)
    dry = vigil(cfg, "prune", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    why = {d["point_id"]: d["reason"] for d in json.loads(dry.stdout)["decisions"]}
    assert "keep_last 1/2" in why[newest_first[0]], why
    assert "keep_last 2/2" in why[newest_first[1]], why
    assert "keep_last 2/2" not in why[newest_first[0]]
    assert "no keep rule applies" in why[newest_first[2]], why
    assert all("policy keep2" in w for w in why.values()), why
    text = vigil(cfg, "prune", "--dry-run")
    assert f"keep   {newest_first[0]}" in text.stdout and "keep_last 1/2" in text.stdout
