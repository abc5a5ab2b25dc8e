"""What the admin is told, and when: the event model, grouping, rate limits and message
text. Pure: time is passed in, nothing here does I/O.

Events of one kind are collected for `window` seconds after the first one and then sent as
one message ("50 VMs failing: a, b, c … and 47 more"); a kind is never sent more often
than once per `min_interval` (recoveries too), events arriving meanwhile wait and are sent
together when the interval is over. A recovery is only reported for a VM that was
reported failing or in RPO breach, so a routine success stays silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    FAILING = "failing"
    RPO_BREACH = "rpo_breach"
    RECOVERED = "recovered"
    CONFLICT = "conflict"
    UNPROTECTED = "unprotected"
    POLICY_REJECTED = "policy_rejected"
    PRUNE_ERROR = "prune_error"
    REPO_DAMAGE = "repository_damage"
    COPY_ERROR = "copy_error"


# Kinds after which a VM counts as in trouble until it recovers.
TROUBLE = (Kind.FAILING, Kind.RPO_BREACH)

# (singular noun phrase, plural template) per kind; {n} is the count.
_TITLES: dict[Kind, tuple[str, str]] = {
    Kind.FAILING: ("VM backup failing", "{n} VMs failing their backups"),
    Kind.RPO_BREACH: ("VM past its RPO", "{n} VMs past their RPO"),
    Kind.RECOVERED: ("VM backed up again", "{n} VMs recovered"),
    Kind.CONFLICT: ("VM in a policy conflict", "{n} VMs in a policy conflict"),
    Kind.UNPROTECTED: ("VM no longer protected", "{n} VMs no longer protected"),
    Kind.POLICY_REJECTED: ("policy files rejected", "policy files rejected ({n} errors)"),
    Kind.PRUNE_ERROR: ("prune error", "{n} prune errors"),
    Kind.REPO_DAMAGE: ("repository damage found", "repository damage found ({n} reports)"),
    Kind.COPY_ERROR: ("offsite copy failing", "{n} offsite copies failing"),
}
_SEVERITY = {Kind.RECOVERED: "success", Kind.UNPROTECTED: "warning", Kind.CONFLICT: "warning"}


@dataclass(frozen=True)
class Event:
    kind: Kind
    subject: str  # the VM's name, or what the event is about ("policies", "prune")
    detail: str = ""


@dataclass(frozen=True)
class Message:
    kind: Kind
    title: str
    body: str
    severity: str  # apprise notify type: info, success, warning, failure


@dataclass
class _Pending:
    first_at: float
    events: dict[str, Event] = field(default_factory=dict)  # subject → newest event


class Batcher:
    def __init__(
        self, *, window: float = 30.0, min_interval: float = 300.0, max_listed: int = 3
    ) -> None:
        self.window = window
        self.min_interval = min_interval
        self.max_listed = max_listed
        self.pending: dict[Kind, _Pending] = {}
        self.last_sent: dict[Kind, float] = {}
        self.trouble: dict[str, set[Kind]] = {}  # subject → the trouble kinds reported

    def add(self, event: Event, now: float) -> None:
        if event.kind in TROUBLE:
            self.trouble.setdefault(event.subject, set()).add(event.kind)
        elif event.kind is Kind.RECOVERED:
            # A success after a success is not news; one after a failure or breach is.
            if not self.trouble.pop(event.subject, None):
                return
            for kind in TROUBLE:  # it may still wait unsent: it is moot now
                if (p := self.pending.get(kind)) is not None:
                    p.events.pop(event.subject, None)
        p = self.pending.setdefault(event.kind, _Pending(first_at=now))
        p.events[event.subject] = event

    def clear(self, subject: str, kind: Kind) -> None:
        """The trouble ended without a recovery to report (e.g. the VM left its policy)."""
        if (kinds := self.trouble.get(subject)) is not None:
            kinds.discard(kind)
            if not kinds:
                del self.trouble[subject]

    def due(self, now: float, status_url: str = "") -> list[Message]:
        """The messages to send now; their events are then no longer pending."""
        out = []
        for kind in list(self.pending):
            p = self.pending[kind]
            if not p.events:
                del self.pending[kind]
                continue
            if now < p.first_at + self.window:
                continue
            if now < self.last_sent.get(kind, float("-inf")) + self.min_interval:
                continue
            out.append(format_message(kind, list(p.events.values()), status_url, self.max_listed))
            self.last_sent[kind] = now
            del self.pending[kind]
        return out

    def next_wakeup(self, now: float) -> float | None:
        """When due() may next have something (for the sender's sleep); None = nothing pending."""
        times = [
            max(p.first_at + self.window, self.last_sent.get(k, float("-inf")) + self.min_interval)
            for k, p in self.pending.items()
        ]
        return min(times) if times else None


def format_message(
    kind: Kind, events: list[Event], status_url: str = "", max_listed: int = 3
) -> Message:
    events = sorted(events, key=lambda e: e.subject)
    n = len(events)
    one, many = _TITLES[kind]
    title = f"vigil: {one}: {events[0].subject}" if n == 1 else "vigil: " + many.format(n=n)
    names = ", ".join(e.subject for e in events[:max_listed])
    if n > max_listed:
        names += f" … and {n - max_listed} more"
    lines = [f"{many.format(n=n) if n > 1 else one}: {names}"]
    lines += [f"- {e.subject}: {_clip(e.detail)}" for e in events[:max_listed] if e.detail]
    if status_url:
        lines.append(f"Status: {status_url}")
    return Message(kind, title, "\n".join(lines), _SEVERITY.get(kind, "failure"))


def _clip(text: str, limit: int = 300) -> str:
    # An error can carry a whole traceback or SOAP fault; the status page has the rest.
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
