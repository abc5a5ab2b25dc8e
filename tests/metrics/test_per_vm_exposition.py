"""The per-VM series are rendered as text by vigil (protector/daemon/metrics.py, for speed
at 50,000 VMs): the text must be exactly what prometheus_client's own collector and
generate_latest write for the same series, escaping included, so Prometheus, promtool and
the alert rules see no difference."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from protector.daemon.metrics import _PER_VM_FAMILIES, ClientRendered, Metrics

ROWS = [
    {
        "path": "/DC0/vm/prod/web-1",
        "policy": "gold",
        "newest_point_at": "2026-12-01T00:00:00+00:00",
        "rpo_seconds": 86400.0,
        "state": "ok",
    },
    {"path": "/DC0/vm/other", "policy": None, "rpo_seconds": None, "state": "unprotected"},
    {  # what an admin may name a folder or VM: quotes, backslashes, a newline, non-ASCII
        "path": '/DC0/vm/we"ird\\na\nme-ü',
        "policy": 'p"1\\',
        "newest_point_at": "2026-11-30T12:34:56.789+00:00",
        "rpo_seconds": 900,
        "state": "failing",
    },
]


def test_per_vm_text_is_what_prometheus_client_writes() -> None:
    m = Metrics()
    m.set_vms(ROWS)
    ours = m.exposition().decode()
    registry = CollectorRegistry()
    registry.register(ClientRendered(ROWS))
    theirs = generate_latest(registry).decode()
    assert ours.endswith(theirs), (ours[-2000:], theirs)
    families = {f.name: f for f in text_string_to_metric_families(ours)}
    weird = [s for s in families["vigil_vm_state"].samples if s.labels["state"] == "failing"]
    assert weird[0].labels["vm"] == '/DC0/vm/we"ird\\na\nme-ü'


def test_no_vms_still_declares_the_families() -> None:
    text = Metrics().exposition().decode()
    for name, _help in _PER_VM_FAMILIES:
        assert f"# TYPE {name} gauge\n" in text
