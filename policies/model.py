"""The policy model (what a `[[policy]]` table means) and the plain inventory facts it matches.

Everything here is an immutable value: a loaded policy set can be shared between the event
loop, the scheduler and the status page without copies or locks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import time, timedelta
from types import MappingProxyType

POWER_STATES = ("poweredOn", "poweredOff", "suspended")
TRANSPORT_MODES = ("vddk", "http", "file")
ON_MATCH = ("immediate", "schedule")

# The selector keys in the order they are documented; `attributes` maps a custom attribute
# name to alternatives, every other key is a list of alternatives.
SELECTOR_LIST_KEYS = (
    "folders",
    "names",
    "tags",
    "resource_pools",
    "datacenters",
    "power_states",
    "guest_ids",
    "annotation",
    "vapps",
)


@dataclass(frozen=True)
class VmFacts:
    """What the engine needs to know about one VM: plain data the watcher derives from its tree."""

    key: str  # stable identity (vCenter instanceUuid + VM instanceUuid), never the MoRef
    path: str  # govc-style inventory path, "/DC0/vm/prod/web-1"
    name: str
    datacenter: str
    folder: str  # inventory path of the parent folder, "/DC0/vm/prod"
    resource_pool: str | None = None  # "/DC0/host/C0/Resources/pool-a"; None for templates
    power_state: str = "poweredOff"
    guest_id: str | None = None
    tags: frozenset[str] = frozenset()  # "Category:Tag"
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    annotation: str = ""
    template: bool = False
    vapps: tuple[str, ...] = ()  # the vApps the VM is in, innermost first (nested ones too)
    vcenter: str = ""  # the configured name of its vCenter (vigil.toml), for `vcenters`


@dataclass(frozen=True)
class Selector:
    """A `[policy.select]` or `[policy.exclude]` table.

    Each list holds alternatives (any may match); an empty tuple means "not given".
    `templates` is None when the key was not given.
    """

    folders: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    resource_pools: tuple[str, ...] = ()
    datacenters: tuple[str, ...] = ()
    power_states: tuple[str, ...] = ()
    guest_ids: tuple[str, ...] = ()
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # sorted by attribute name
    annotation: tuple[str, ...] = ()
    vapps: tuple[str, ...] = ()
    templates: bool | None = None

    def criteria(self) -> Iterator[tuple[str, str | None, tuple[str, ...]]]:
        """(key, attribute name or None, patterns) for every criterion given."""
        for key in SELECTOR_LIST_KEYS:
            patterns: tuple[str, ...] = getattr(self, key)
            if patterns:
                yield key, None, patterns
        for attr, patterns in self.attributes:
            yield "attributes", attr, patterns

    @property
    def is_empty(self) -> bool:
        """True when no criterion is given (`templates` alone selects nothing by itself)."""
        return next(self.criteria(), None) is None


@dataclass(frozen=True)
class Window:
    """A daily backup window in local time; `end <= start` means it crosses midnight."""

    start: time
    end: time

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Schedule:
    rpo: timedelta
    window: Window | None = None


@dataclass(frozen=True)
class Trigger:
    on_match: str = "immediate"  # or "schedule"
    outside_window: bool = True
    on_power_off: bool = False


@dataclass(frozen=True)
class Retention:
    keep_last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0


# What a backup does when it asked for a quiesced snapshot and did not get one (a quiesce
# fault, or vCenter ignoring the flag because VMware Tools are not running).
ON_QUIESCE_FAILURE = ("crash-consistent", "fail")


@dataclass(frozen=True)
class BackupOptions:
    quiesce: bool = True
    on_quiesce_failure: str = "crash-consistent"  # one of ON_QUIESCE_FAILURE
    enable_cbt: bool = True
    exclude_disks: tuple[str, ...] = ()  # "scsi0:1"
    transport: tuple[str, ...] | None = None  # None: the daemon's [transport] modes

    @property
    def quiesce_fallback(self) -> bool:
        """May a crash-consistent snapshot stand in for a quiesced one."""
        return self.on_quiesce_failure == "crash-consistent"


@dataclass(frozen=True)
class Policy:
    name: str
    priority: int
    select: Selector
    schedule: Schedule
    retention: Retention
    enabled: bool = True
    exclude: Selector = Selector()
    trigger: Trigger = Trigger()
    backup: BackupOptions = BackupOptions()
    # The configured vCenters (by name) whose VMs it may select; empty: every vCenter.
    vcenters: tuple[str, ...] = ()
    source: str = ""  # the file it came from, for messages
    # Offsite copies ([copies.NAME] of vigil.toml) each new point goes to, and how long a
    # copy keeps points (None: as long as `retention` says).
    copy_to: tuple[str, ...] = ()
    copy_retention: Retention | None = None

    @property
    def retention_of_copies(self) -> Retention:
        return self.copy_retention or self.retention


@dataclass(frozen=True)
class PolicySet:
    """The policies of one load, in a stable order (by name)."""

    policies: tuple[Policy, ...] = ()
    source: str = ""
    # By name: the daemon looks a VM's policy up per VM per status request (50,000 x 200).
    _by_name: Mapping[str, Policy] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.policies, key=lambda p: p.name))
        object.__setattr__(self, "policies", ordered)
        # The first of a name wins, as a scan would (load refuses duplicate names anyway).
        by_name: dict[str, Policy] = {}
        for p in ordered:
            by_name.setdefault(p.name, p)
        object.__setattr__(self, "_by_name", by_name)  # a dict: copies and pickles

    @property
    def selects_by_tag(self) -> bool:
        """Whether any policy's scope depends on tags (then a reader must fetch them)."""
        return any(p.select.tags or p.exclude.tags for p in self.policies)

    def __iter__(self) -> Iterator[Policy]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def get(self, name: str) -> Policy | None:
        return self._by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)
