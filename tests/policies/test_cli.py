"""The reports behind `vigil policy check` and `vigil policy diff`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from policy_helpers import make_vm, policy_toml

from policies import (
    PolicyLoadError,
    check_exit_code,
    check_report,
    diff_report,
    render_check,
    render_diff,
    report_errors,
)

ROOT = Path(__file__).resolve().parents[2]

VMS = [
    make_vm("/DC0/vm/prod/web-1"),
    make_vm("/DC0/vm/prod/db-1"),
    make_vm("/DC0/vm/dev/dev-1"),
    make_vm("/DC0/vm/dev/tmp-1"),
]


def write_set(d: Path, *policies: str) -> Path:
    d.mkdir()
    (d / "p.toml").write_text("\n".join(policies))
    return d


def test_check_report_shape_and_order(tmp_path: Path) -> None:
    d = write_set(
        tmp_path / "pol",
        policy_toml("prod", 20, 'folders = ["/DC0/vm/prod/**"]'),
        policy_toml("db", 30, 'names = ["db-*"]'),
        policy_toml("dev", 5, 'names = ["dev-*"]'),
    )
    report = check_report(d, reversed(VMS))
    assert report == {
        "policies": [
            {"name": "db", "vms": ["/DC0/vm/prod/db-1"]},
            {"name": "dev", "vms": ["/DC0/vm/dev/dev-1"]},
            {"name": "prod", "vms": ["/DC0/vm/prod/web-1"]},
        ],
        "overlaps": [{"vm": "/DC0/vm/prod/db-1", "policies": ["db", "prod"], "winner": "db"}],
        "unprotected": ["/DC0/vm/dev/tmp-1"],
    }
    assert json.loads(json.dumps(report)) == report
    assert check_exit_code(report) == 0 and report_errors(report) == []
    text = render_check(report)
    assert "policy db: 1 VM\n  /DC0/vm/prod/db-1\n" in text
    assert "  /DC0/vm/prod/db-1: db, prod -> db\n" in text
    assert text.endswith("unprotected: 1\n  /DC0/vm/dev/tmp-1\n")


def test_check_reports_equal_priority_conflicts_as_errors(tmp_path: Path) -> None:
    d = write_set(
        tmp_path / "pol",
        policy_toml("prod", 20, 'folders = ["/DC0/vm/prod/**"]'),
        policy_toml("web", 20, 'names = ["web-*"]'),
    )
    report = check_report(d, VMS)
    assert report["overlaps"] == [
        {"vm": "/DC0/vm/prod/web-1", "policies": ["prod", "web"], "winner": None}
    ]
    assert "/DC0/vm/prod/web-1" in report["unprotected"]
    assert check_exit_code(report) == 2
    assert report_errors(report) == [
        "vm \"/DC0/vm/prod/web-1\": policies 'prod', 'web' match with the same highest "
        "priority; the VM is not protected until the priorities differ"
    ]
    assert "CONFLICT (equal priority): not protected" in render_check(report)


def test_check_of_invalid_policies_raises_with_every_error(tmp_path: Path) -> None:
    d = write_set(tmp_path / "pol", policy_toml("a", 1, 'names = ["re:("]', "[policy.x]\n"))
    with pytest.raises(PolicyLoadError) as info:
        check_report(d, VMS)
    assert len(info.value.errors) == 2


def test_diff_report(tmp_path: Path) -> None:
    cur = write_set(
        tmp_path / "cur",
        policy_toml("prod", 20, 'folders = ["/DC0/vm/prod/**"]'),
        policy_toml("dev", 5, 'names = ["dev-*"]'),
        policy_toml("gone", 1, 'names = ["nothing"]'),
    )
    new = write_set(
        tmp_path / "new",
        policy_toml("prod", 20, 'folders = ["/DC0/vm/prod/**"]'),
        policy_toml("db", 30, 'names = ["db-*"]'),
        policy_toml("dev", 5, 'names = ["tmp-*"]'),
    )
    report = diff_report(cur, new, VMS)
    assert report == {
        "protected": [{"vm": "/DC0/vm/dev/tmp-1", "policy": "dev"}],
        "unprotected": [{"vm": "/DC0/vm/dev/dev-1", "policy": "dev"}],
        "changed": [{"vm": "/DC0/vm/prod/db-1", "from": "prod", "to": "db"}],
        "policies": {"added": ["db"], "removed": ["gone"], "modified": ["dev"]},
        "conflicts": [],
    }
    text = render_diff(report)
    assert "- /DC0/vm/dev/dev-1: NO LONGER PROTECTED (was dev)\n" in text
    assert "+ /DC0/vm/dev/tmp-1: now protected by dev\n" in text
    assert "~ /DC0/vm/prod/db-1: prod -> db\n" in text
    assert render_diff(diff_report(cur, cur, VMS)) == "no change\n"


def test_examples_against_a_realistic_inventory() -> None:
    vms = [
        make_vm("/DC0/vm/prod/db-1"),
        make_vm("/DC0/vm/prod/app/web-1", tags=frozenset({"Backup:Gold"})),
        make_vm("/DC0/vm/prod/app/web-tmp"),
        make_vm("/DC1/vm/scratch/x", attributes={"Owner": "team-a"}, guest_id="rhel9_64Guest"),
        make_vm("/DC1/vm/scratch/y"),
        make_vm("/DC1/vm/lab/z", tags=frozenset({"Backup:Never"})),
    ]
    report = check_report(ROOT / "policies.example", vms)
    winners = {vm: p["name"] for p in report["policies"] for vm in p["vms"]}
    assert winners == {
        "/DC0/vm/prod/db-1": "prod-databases",
        "/DC0/vm/prod/app/web-1": "gold-tagged",
        "/DC0/vm/prod/app/web-tmp": "baseline",
        "/DC1/vm/scratch/x": "team-owned",
    }
    assert report["unprotected"] == ["/DC1/vm/lab/z", "/DC1/vm/scratch/y"]
    assert check_exit_code(report) == 0
