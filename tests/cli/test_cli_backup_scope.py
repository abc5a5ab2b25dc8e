"""`vigil backup --policy NAME` / `--folder PATH` (issue 19, item 7): every VM of a scope
backed up now against the simulator, each with its own point and result line, the policy's
options applied, VMs in conflict skipped with the reason."""

from __future__ import annotations

import json

from tests.cli.test_cli_prune import setup, vigil

POLICIES = """
[[policy]]
name = "web"
priority = 10
[policy.select]
names = ["DC0_H0_VM*"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 2

[[policy]]
name = "rival"
priority = 10
[policy.select]
names = ["DC0_H0_VM1"]
[policy.schedule]
rpo = "24h"
[policy.retention]
keep_last = 2
"""


def test_backup_a_policy_scope_and_a_folder(tmp_path, vcsim_fresh):
    cfg = setup(tmp_path, vcsim_fresh.url)
    (tmp_path / "pol" / "p.toml").write_text(POLICIES)
    r = vigil(cfg, "backup", "--policy", "web", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [p["vm"]["name"] for p in out["points"]] == ["DC0_H0_VM0"]
    assert out["failures"] == []
    [skipped] = out["skipped"]  # VM1: web and rival tie
    assert skipped["vm"].endswith("DC0_H0_VM1") and "rival" in skipped["reason"]
    listed = json.loads(vigil(cfg, "list", "--json").stdout)
    assert [(p["vm"]["name"], p["policy"]) for p in listed] == [("DC0_H0_VM0", "web")]

    # Every VM of the folder (the simulator puts them all directly in /DC0/vm), text output.
    inventory = json.loads(vigil(cfg, "inventory", "--json").stdout)
    in_folder = sorted(v["path"] for v in inventory if v["path"].startswith("/DC0/vm/"))
    t = vigil(cfg, "backup", "--folder", "/DC0/vm")
    assert t.returncode == 0, t.stderr
    for path in in_folder:
        assert f"  {path}: " in t.stdout
    assert f"{len(in_folder)} backed up, 0 failed" in t.stdout
    assert len(json.loads(vigil(cfg, "list", "--json").stdout)) == len(in_folder) + 1

    bad = vigil(cfg, "backup", "--policy", "wbe")
    assert bad.returncode == 2 and "did you mean web" in bad.stderr
    both = vigil(cfg, "backup", "DC0_H0_VM0", "--folder", "/DC0/vm")
    assert both.returncode == 2 and "one of these" in both.stderr


def test_the_scope_rules_folder_below_templates_skipped_conflicts_named(tmp_path):
    """select() is pure: the folder means the folder and below (not a sibling that shares
    the prefix); templates are skipped with the reason; --policy takes the engine's winner."""
    from policies.loader import load_policies
    from policies.model import VmFacts
    from protector.cli.backup_scope import folder_glob, select

    def facts(path: str, template: bool = False) -> VmFacts:
        folder, _, name = path.rpartition("/")
        return VmFacts(path, path, name, "DC0", folder, template=template)

    vms = [
        facts("/DC0/vm/prod/DC0_H0_VM0"),
        facts("/DC0/vm/prod/deep/DC0_H0_VM1"),
        facts("/DC0/vm/production/x"),
        facts("/DC0/vm/prod/tpl", template=True),
    ]
    assert folder_glob("/DC0/vm/prod/") == "/DC0/vm/prod/**"
    assert folder_glob("/*/vm/prod") == "/*/vm/prod"
    s = select(vms, lambda v: v, None, folder="/DC0/vm/prod")
    assert [v.path for v, _ in s.vms] == ["/DC0/vm/prod/DC0_H0_VM0", "/DC0/vm/prod/deep/DC0_H0_VM1"]
    assert [(v.path, "template" in why) for v, why in s.skipped] == [("/DC0/vm/prod/tpl", True)]
    (tmp_path / "p.toml").write_text(POLICIES)
    policies = load_policies(tmp_path)
    s = select(vms, lambda v: v, policies, policy="web", folder="/DC0/vm/prod")
    assert [(v.name, p) for v, p in s.vms] == [("DC0_H0_VM0", "web")]
    assert [(v.name, "rival" in why) for v, why in s.skipped] == [("DC0_H0_VM1", True)]
