"""Prometheus metrics of the daemon, on a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Every state `vigil status` shows (vigil_vm_state's `state` label).
VM_STATES = ("ok", "due", "running", "queued", "breached", "failing", "conflict", "unprotected")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.vms = Gauge("vigil_vms", "VMs by protection state", ["state"], registry=r)
        self.rpo_breaches = Gauge(
            "vigil_rpo_breaches",
            "Protected VMs whose newest good point is older than the RPO",
            registry=r,
        )
        self.jobs = Counter("vigil_jobs", "Backup jobs by outcome", ["outcome"], registry=r)
        self.bytes_read = Counter("vigil_read_bytes", "Bytes read from virtual disks", registry=r)
        self.bytes_stored = Counter(
            "vigil_stored_bytes", "New bytes written to the repository", registry=r
        )
        self.backup_duration = Histogram(
            "vigil_backup_duration_seconds",
            "Duration of successful backups",
            buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 14400),
            registry=r,
        )
        self.update_lag = Gauge(
            "vigil_inventory_update_lag_seconds",
            "Seconds since the inventory update loop last heard from vCenter",
            registry=r,
        )
        self.policy_reload_errors = Counter(
            "vigil_policy_reload_errors", "Policy reloads rejected as invalid", registry=r
        )
        self.policy_errors = Gauge(
            "vigil_policy_errors", "Errors in the policy files currently on disk", registry=r
        )
        self.events = Counter("vigil_inventory_events", "Inventory events", ["kind"], registry=r)
        self.connected = Gauge(
            "vigil_vcenter_connected",
            "1 while the daemon's session to vCenter is live and its inventory current",
            registry=r,
        )
        self._per_vm = _PerVmSeries()  # not in the registry: see exposition()
        self._repos = _RepositoryCollector()
        r.register(self._repos)

    def exposition(self) -> bytes:
        """What /metrics serves: the registry's families, then the per-VM series."""
        return generate_latest(self.registry) + self._per_vm.render().encode()

    def set_vms(self, vms: Iterable[Mapping[str, Any]]) -> None:
        """The per-VM series from now on: those of `vms` (the daemon's vm_rows()), so a VM
        that is gone or changed policy leaves no stale series behind."""
        self._per_vm.vms = list(vms)

    def set_repositories(self, repos: Iterable[Mapping[str, Any]]) -> None:
        """The per-repository series from now on (the daemon's repositories())."""
        self._repos.repos = list(repos)


_PER_VM_FAMILIES = (
    (
        "vigil_vm_last_success_timestamp_seconds",
        "Commit time of the VM's newest good restore point (absent: none yet)",
    ),
    ("vigil_vm_rpo_seconds", "The RPO of the VM's policy (protected VMs only)"),
    ("vigil_vm_state", f"The VM's state, valued 1 (one of: {', '.join(VM_STATES)})"),
)


def _label(value: str) -> str:
    """A label value escaped as the text exposition format wants (prometheus_client's rule)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class _PerVmSeries:
    """Per-VM series for alerting, rendered at scrape time from the last set_vms(): label
    `vm` is the inventory path (unique, readable), `policy` the winning one ("" none). The
    state is one series per VM, the current one, valued 1 (not the eight-series StateSet):
    alerts match `vigil_vm_state{state="failing"} == 1` all the same.

    Rendered as text here rather than through prometheus_client's collector and
    generate_latest: its per-sample formatting cost 1.2 s of the event loop per scrape at
    50,000 VMs (150,000 samples; bench/bench_metrics.py). The lines are those
    generate_latest writes (same escaping, same number format), after its families."""

    def __init__(self) -> None:
        self.vms: list[Mapping[str, Any]] = []

    def render(self) -> str:
        last: list[str] = []
        rpo: list[str] = []
        state: list[str] = []
        fmt = floatToGoString
        for v in self.vms:
            # Labels in prometheus_client's order: sorted by name.
            pol, vm = f'policy="{_label(v["policy"] or "")}"', f'vm="{_label(v["path"])}"'
            if at := v.get("newest_point_at"):
                ts = fmt(datetime.fromisoformat(at).timestamp())
                last.append(f"vigil_vm_last_success_timestamp_seconds{{{pol},{vm}}} {ts}\n")
            if (seconds := v.get("rpo_seconds")) is not None:
                rpo.append(f"vigil_vm_rpo_seconds{{{pol},{vm}}} {fmt(seconds)}\n")
            state.append(f'vigil_vm_state{{{pol},state="{_label(v["state"])}",{vm}}} 1.0\n')
        out = []
        for (name, help_text), lines in zip(_PER_VM_FAMILIES, (last, rpo, state), strict=True):
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            out.append("".join(lines))
        return "".join(out)


class ClientRendered(Collector):
    """The per-VM series of `rows` through prometheus_client's own collector types: what
    _PerVmSeries.render must equal byte for byte (its test), and the cost it avoids (its
    benchmark, bench/bench_metrics.py)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.rows = list(rows)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        (n1, h1), (n2, h2), (n3, h3) = _PER_VM_FAMILIES
        last = GaugeMetricFamily(n1, h1, labels=["vm", "policy"])
        rpo = GaugeMetricFamily(n2, h2, labels=["vm", "policy"])
        state = GaugeMetricFamily(n3, h3, labels=["vm", "policy", "state"])
        for v in self.rows:
            labels = [v["path"], v["policy"] or ""]
            if v.get("newest_point_at"):
                last.add_metric(labels, datetime.fromisoformat(v["newest_point_at"]).timestamp())
            if v.get("rpo_seconds") is not None:
                rpo.add_metric(labels, v["rpo_seconds"])
            state.add_metric([*labels, v["state"]], 1)
        yield from (last, rpo, state)


class _RepositoryCollector(Collector):
    """Per-repository series, label `repository` = its table in vigil.toml ("repository",
    "copies.NAME"). Size and objects come from the last background walk (absent before the
    first one ends); the unlocked figures only for a repository under object lock; the
    copy series only for copies."""

    def __init__(self) -> None:
        self.repos: list[Mapping[str, Any]] = []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        lab = ["repository"]
        size = GaugeMetricFamily(
            "vigil_repository_size_bytes", "Bytes stored in the repository", labels=lab
        )
        objects = GaugeMetricFamily(
            "vigil_repository_objects", "Objects (files) in the repository", labels=lab
        )
        measured = GaugeMetricFamily(
            "vigil_repository_size_timestamp_seconds",
            "When the size and object count were last measured",
            labels=lab,
        )
        unlocked = GaugeMetricFamily(
            "vigil_repository_unlocked_points",
            "Restore points whose object lock has run out (object-locked repositories only)",
            labels=lab,
        )
        oldest = GaugeMetricFamily(
            "vigil_repository_oldest_unlocked_point_timestamp_seconds",
            "Commit time of the oldest restore point no longer under object lock",
            labels=lab,
        )
        waiting = GaugeMetricFamily(
            "vigil_repository_points_waiting",
            "Restore points of copy_to policies the copy lacks (copies only)",
            labels=lab,
        )
        failing = GaugeMetricFamily(
            "vigil_repository_copy_failing",
            "1 while copying to this copy fails (retried with back-off), else 0",
            labels=lab,
        )
        copied = CounterMetricFamily(
            "vigil_repository_copied_points",
            "Restore points copied into this copy by the daemon since it started",
            labels=lab,
        )
        for r in self.repos:
            labels = [str(r["where"])]
            if r.get("size_bytes") is not None:
                size.add_metric(labels, r["size_bytes"])
                objects.add_metric(labels, r["objects"])
                measured.add_metric(labels, datetime.fromisoformat(r["size_at"]).timestamp())
            if r.get("unlocked_points") is not None:
                unlocked.add_metric(labels, r["unlocked_points"])
                if r.get("oldest_unlocked"):
                    at = datetime.fromisoformat(r["oldest_unlocked"]["committed_at"])
                    oldest.add_metric(labels, at.timestamp())
            if r.get("role") == "copy":
                waiting.add_metric(labels, r.get("points_waiting", 0))
                failing.add_metric(labels, 1 if r.get("error") else 0)
                copied.add_metric(labels, r.get("copied", 0))
        yield from (size, objects, measured, unlocked, oldest, waiting, failing, copied)
