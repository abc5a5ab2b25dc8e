"""Prometheus metrics of the daemon, on a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
