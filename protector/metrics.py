"""Prometheus metrics of the daemon, on a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Every state `vigil status` shows; each VM gets one 0/1 series per state (the Prometheus
# "StateSet" pattern), so alerts can match `vigil_vm_state{state="failing"} == 1`.
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
        # Per VM, for alerting: label `vm` is the inventory path (unique, readable), `policy`
        # the winning policy ("" when none).
        per_vm = ["vm", "policy"]
        self.vm_last_success = Gauge(
            "vigil_vm_last_success_timestamp_seconds",
            "Commit time of the VM's newest good restore point (absent: none yet)",
            per_vm,
            registry=r,
        )
        self.vm_rpo = Gauge(
            "vigil_vm_rpo_seconds",
            "The RPO of the VM's policy (protected VMs only)",
            per_vm,
            registry=r,
        )
        self.vm_state = Gauge(
            "vigil_vm_state",
            "1 for the VM's current state, 0 for the others",
            [*per_vm, "state"],
            registry=r,
        )

    def set_vms(self, vms: Iterable[Mapping[str, Any]]) -> None:
        """Replace every per-VM series with those of `vms` (the daemon's vm_status()), so a
        VM that is gone or changed policy leaves no stale series behind."""
        for gauge in (self.vm_last_success, self.vm_rpo, self.vm_state):
            gauge.clear()
        for v in vms:
            labels = (v["path"], v["policy"] or "")
            if v.get("newest_point_at"):
                at = datetime.fromisoformat(v["newest_point_at"]).timestamp()
                self.vm_last_success.labels(*labels).set(at)
            if v.get("rpo_seconds") is not None:
                self.vm_rpo.labels(*labels).set(v["rpo_seconds"])
            for state in VM_STATES:
                self.vm_state.labels(*labels, state).set(1 if v["state"] == state else 0)
