"""The admin's conveniences (issue 19, item 7) through the real CLI, without vCenter:
--version, pin/unpin that prune honours, POINT prefixes and `latest`, `vigil stats`, and the
completion scripts and man page generated from the parser."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

from protector.cli.app import COMMANDS, build_parser
from protector.cli.docgen import write_all
from repository import KeepLast, Repository, prune
from tests.repository.repo_helpers import CHUNK, vm, write_point
from tests.usability.clihelp import ROOT, vigil


def setup(tmp_path: Path) -> tuple[Path, Repository]:
    cfg = tmp_path / "vigil.toml"
    cfg.write_text(
        '[vcenter]\nurl = "https://127.0.0.1:9/sdk"\nuser = "u"\npassword_env = "VIGIL_TEST_PW"\n'
        '[repository]\npath = "repo"\n[policies]\npath = "pol"\n'
    )
    return cfg, Repository.init(tmp_path / "repo", chunk_size=CHUNK, passphrase=None)


def run(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return vigil("--config", str(cfg), *args)


def test_version_is_the_package_version():
    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    r = vigil("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vigil {want}"


def test_a_pinned_point_survives_prune_until_unpinned(tmp_path):
    cfg, repo = setup(tmp_path)
    ids = [write_point(repo, vm(1), {"d": bytes([n]) * CHUNK}) for n in (1, 2, 3)]
    r = run(cfg, "pin", ids[0], "--note", "before the upgrade")
    assert r.returncode == 0 and f"pinned {ids[0]}" in r.stdout, r.stderr
    listed = json.loads(run(cfg, "list", "--json").stdout)
    assert {p["id"]: p["pinned"] for p in listed} == {ids[0]: True, ids[1]: False, ids[2]: False}

    dry = prune(repo, lambda _vm, _policy: KeepLast(1), dry_run=True)
    assert {d.point_id: d.delete for d in dry.decisions} == {
        ids[0]: False,
        ids[1]: True,
        ids[2]: False,
    }
    assert "pinned" in next(d.reason for d in dry.decisions if d.point_id == ids[0])
    prune(repo, lambda _vm, _policy: KeepLast(1), grace=_no_grace())
    assert repo.list_points() == sorted([ids[0], ids[2]])
    assert run(cfg, "export", ids[0], "-o", str(tmp_path / "d.raw")).returncode == 0
    assert (tmp_path / "d.raw").read_bytes() == bytes([1]) * CHUNK  # its chunks were kept

    r = run(cfg, "unpin", "vm1@latest")  # the newest is not pinned: says so
    assert r.returncode == 0 and "was not pinned" in r.stdout
    assert run(cfg, "unpin", ids[0]).returncode == 0
    prune(repo, lambda _vm, _policy: KeepLast(1), grace=_no_grace())
    assert repo.list_points() == [ids[2]]


def test_pinning_while_prune_runs_stops_the_delete(tmp_path):
    """delete_point checks the pin under the VM's lock: a pin placed after prune planned
    still keeps the point."""
    import pytest

    from repository.errors import PointPinnedError

    _cfg, repo = setup(tmp_path)
    pid = write_point(repo, vm(1), {"d": b"a" * CHUNK})
    manifest = repo.load_manifest(pid)
    assert repo.pin(pid) and not repo.pin(pid)
    with pytest.raises(PointPinnedError):
        repo.delete_point(manifest, "retention")
    assert repo.list_points() == [pid]


def test_ambiguous_prefix_and_latest_are_refused_with_candidates(tmp_path):
    cfg, repo = setup(tmp_path)
    a = write_point(repo, vm(1), {"d": b"a" * CHUNK})
    b = write_point(repo, vm(1), {"d": b"b" * CHUNK})
    c = write_point(repo, vm(2), {"d": b"c" * CHUNK})
    r = run(cfg, "verify", a.split("-")[0])
    assert r.returncode == 2 and a in r.stderr and b in r.stderr and "matches 2" in r.stderr
    r = run(cfg, "export", "latest", "-o", str(tmp_path / "x.raw"))
    assert r.returncode == 2 and "2 VMs" in r.stderr and "/dc/vm/vm1" in r.stderr
    r = run(cfg, "verify", "vm2@latest", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["points_checked"] == 1
    r = run(cfg, "verify", c.split("-")[0][:8], "--json")  # a unique prefix (vm2's point)
    assert r.returncode == 0 and json.loads(r.stdout)["points_checked"] == 1


def test_stats_reports_size_dedup_and_growth(tmp_path):
    cfg, repo = setup(tmp_path)
    shared = bytes(range(256)) * (CHUNK // 256)
    own = b"x" * CHUNK
    # vm1: two points of [shared, own] then [shared, own2]; vm2: [shared, hole].
    write_point(repo, vm(1), {"d": shared + own})
    write_point(repo, vm(1), {"d": shared + b"y" * CHUNK})
    write_point(repo, vm(2), {"d": shared + bytes(CHUNK)})
    r = run(cfg, "stats", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["points"] == 3 and s["vms"] == 2
    assert s["logical_bytes"] == 5 * CHUNK  # the hole is not data
    assert s["unique_bytes"] == 3 * CHUNK  # shared, x, y
    assert s["dedup_ratio"] == round(5 / 3, 2)
    chunks = sum(p.stat().st_size for p in (tmp_path / "repo/chunks").rglob("*") if p.is_file())
    assert s["stored_chunk_bytes"] == chunks and s["repository"]["size_bytes"] >= chunks
    by_name = {v["vm"]["name"]: v for v in s["vm_stats"]}
    assert by_name["vm1"]["added_last_7d_bytes"] == 3 * CHUNK  # shared + x, then y
    assert by_name["vm2"]["added_last_7d_bytes"] == CHUNK
    assert by_name["vm1"]["newest_point_bytes"] == 2 * CHUNK
    text = run(cfg, "stats")
    assert text.returncode == 0 and "dedup 1.67x" in text.stdout and "/dc/vm/vm1" in text.stdout


def test_completion_and_man_page_cover_every_subcommand(tmp_path):
    files = {p.name: p.read_text() for p in write_all(tmp_path)}
    assert set(files) == {"vigil.1", "vigil.bash", "_vigil", "vigil.tcsh"}
    commands = [a for a in build_parser()._subparsers._group_actions[0].choices]  # type: ignore[union-attr]
    assert {"pin", "unpin", "stats", "restore"} <= set(commands)
    assert len(commands) >= len(COMMANDS)
    for name, text in files.items():
        for command in commands:
            assert command in text, (name, command)
    assert "--to-existing" in files["vigil.bash"] and "--version" in files["vigil.1"]
    assert files["vigil.1"].startswith(".TH VIGIL")
    subprocess.run(["bash", "-n", str(tmp_path / "vigil.bash")], check=True)
    # The bash script really completes: COMPREPLY for `vigil un<TAB>`.
    probe = (
        f"source {tmp_path / 'vigil.bash'}; COMP_WORDS=(vigil un); COMP_CWORD=1; "
        "COMP_LINE='vigil un'; COMP_POINT=8; _shtab_vigil; echo ${COMPREPLY[@]}"
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["unpin"]


def _no_grace():  # type: ignore[no-untyped-def]
    from datetime import timedelta

    return timedelta(0)
