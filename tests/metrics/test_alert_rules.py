"""The shipped Prometheus alert rules: valid (`promtool check rules`), and their unit tests
(`promtool test rules`) pass, including the RPO-breach alert firing on a series that breaches
and not on one that does not. A broken RPO rule makes those unit tests fail."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRIB = Path(__file__).parents[2] / "contrib" / "prometheus"
RULES = CONTRIB / "vigil-alerts.yml"
RULE_TESTS = CONTRIB / "vigil-alerts.test.yml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is in Debian's prometheus package (make apt)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True)


def test_rules_are_valid():
    res = promtool("check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_rule_unit_tests_pass():
    res = promtool("test", "rules", RULE_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests_catch_an_rpo_rule_that_does_not_fire(tmp_path):
    """The unit tests are not vacuous: an RPO rule comparing the wrong way fails them."""
    broken = RULES.read_text().replace(
        "> on (job, instance, vm, policy) vigil_vm_rpo_seconds",
        "> on (job, instance, vm, policy) (vigil_vm_rpo_seconds * 1000)",
    )
    assert broken != RULES.read_text()
    (tmp_path / "vigil-alerts.yml").write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path)
    res = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert res.returncode != 0
    assert "alertname: VigilRPOBreach" in res.stdout + res.stderr


DASHBOARD = Path(__file__).parents[2] / "contrib" / "grafana" / "vigil-dashboard.json"


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each panel's query parses: promtool checks them as recording rules (the dashboard's
    `$instance` variable replaced by a regex Grafana could send)."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"vigil:panel_{i}", "expr": e.replace("$instance", ".*")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    res = promtool("check", "rules", path)
    assert res.returncode == 0, res.stdout + res.stderr

    # ... and a broken query would be caught.
    rules["groups"][0]["rules"][0]["expr"] = "sum(vigil_vm_state{"
    path.write_text(json.dumps(rules))
    assert promtool("check", "rules", path).returncode != 0
