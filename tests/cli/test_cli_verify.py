"""`vigil verify --json` names every damaged object and the points and disks it breaks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from protector.daemon.views import repository_view
from repository import Repository
from tests.cli.test_cli_prune import setup, vigil


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_verify_json_names_bad_chunks_manifests_and_affected_points(tmp_path, vcsim_fresh):
    cfg = setup(tmp_path, vcsim_fresh.url)
    # Data on the disk (a blank disk is all zero chunks, which are never stored).
    [flat] = [p for d in vcsim_fresh.datastore_dirs for p in d.glob("DC0_H0_VM0/*-flat.vmdk")]
    with open(flat, "r+b") as f:
        f.write(os.urandom(1024 * 1024))  # the whole 1 MiB disk
    b = vigil(cfg, "backup", "DC0_H0_VM0", "--json")
    assert b.returncode == 0, b.stderr
    point = json.loads(b.stdout)["id"]
    clean = vigil(cfg, "verify", "--read-data", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["affected"] == {}
    # A clean repository has no problem entries (issue 19 item 6: it listed "OK" as one).
    assert json.loads(clean.stdout)["problems"] == [] and json.loads(clean.stdout)["ok"]
    # The status page's "last verify" (issue 19 item 4) is what this run found.
    record = Repository.open(tmp_path / "repo").state.dir / "last_verify.json"
    last = json.loads(record.read_text())
    assert last["ok"] and last["read_data"] and last["points_checked"] == 1
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    assert repository_view({}, None, last)["last_verify"].endswith("OK, read data")

    chunk = files(tmp_path / "repo" / "chunks")[0]
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    r = vigil(cfg, "verify", "--read-data", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert not out["ok"]
    damaged = json.loads(record.read_text())
    assert not damaged["ok"] and damaged["problems"] >= 1
    assert "DAMAGED" in repository_view({}, None, damaged)["last_verify"]
    [bad] = out["bad_chunks"]
    assert chunk.name in bad["chunk"] and bad["reason"]
    assert {a["point"] for a in bad["affects"]} == {point}
    assert list(out["affected"]) == [point]

    manifest = files(tmp_path / "repo" / "manifests")[0]
    manifest.write_bytes(b"\0not a manifest")
    r = vigil(cfg, "verify", "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["bad_manifests"] and manifest.name in out["bad_manifests"][0]["manifest"]
