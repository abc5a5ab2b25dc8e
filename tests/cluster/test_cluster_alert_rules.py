"""The shipped cluster alert rules (contrib/prometheus/vigil-cluster-alerts.yml): valid,
their promtool unit tests pass (each alert fires once although every node serves the same
series), those tests catch a rule that does not aggregate, and every metric the rules use
is one a cluster node serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster.observe import ClusterStats, LeaderStat, NodeStat
from protector.daemon.cluster_metrics import families

CONTRIB = Path(__file__).parents[2] / "contrib" / "prometheus"
RULES = CONTRIB / "vigil-cluster-alerts.yml"
RULE_TESTS = CONTRIB / "vigil-cluster-alerts.test.yml"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is in Debian's prometheus package (make apt)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True)


@needs_promtool
def test_rules_are_valid_and_their_unit_tests_pass():
    res = promtool("check", "rules", RULES)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    res = promtool("test", "rules", RULE_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_unit_tests_catch_a_rule_that_counts_every_scraped_node(tmp_path):
    """Not aggregated, the no-leader rule fires once per node scraped: the tests say so."""
    broken = RULES.read_text().replace(
        "expr: max by (job, vcenter) (vigil_cluster_leader_holding) == 0",
        "expr: vigil_cluster_leader_holding == 0",
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path)
    res = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert res.returncode != 0
    assert "alertname: VigilClusterNoLeader" in res.stdout + res.stderr


def test_every_metric_the_rules_use_is_served():
    stats = ClusterStats(
        nodes=[NodeStat("w1", "worker", 1.0)],
        leaders=[LeaderStat("vc-1", 1, "s1", True)],
        jobs={},
        oldest_ready_s={},
        running={},
        slots={("host", "h"): 1},
    )
    served = {f.name for f in families(stats, 5.0)} | {"vigil_database_up"}
    # The rules' expressions only (the comments name series patterns like vigil_cluster_*).
    exprs = "\n".join(
        line for line in RULES.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    used = set(re.findall(r"\bvigil_[a-z_]+", exprs))
    assert used and used <= served, used - served
