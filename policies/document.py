"""Validate parsed `[[policy]]` tables into `Policy` objects, collecting every error.

Pure: works on a document `tomllib` already parsed (and, for line numbers, its text);
`loader` reads the files and reports TOML syntax errors.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import time, timedelta
from typing import Any

from .errors import PolicyError
from .locator import Locator
from .matching import PatternError, check_pattern
from .model import (
    ON_MATCH,
    ON_QUIESCE_FAILURE,
    SELECTOR_LIST_KEYS,
    TRANSPORT_MODES,
    BackupOptions,
    Policy,
    Retention,
    Schedule,
    Selector,
    Trigger,
    Window,
)

POLICY_KEYS = (
    "name",
    "priority",
    "enabled",
    "select",
    "exclude",
    "schedule",
    "trigger",
    "retention",
    "backup",
    "vcenters",
    "copy_to",
    "copy_retention",
)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DURATION_RE = re.compile(r"([0-9]+)([smhd])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WINDOW_RE = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")
# A [copies.NAME] of vigil.toml (protector/repoconfig.py checks the same shape there).
COPY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
DISK_RE = re.compile(r"(scsi|ide|sata|nvme)[0-9]+:[0-9]+")


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `24h`, `7d` → timedelta; raises ValueError with a readable reason."""
    m = DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f'invalid duration "{text}": expected a whole number and a unit s, m, h or d, '
            'like "90s", "15m", "24h" or "7d"'
        )
    seconds = int(m.group(1)) * DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f'invalid duration "{text}": must be greater than zero')
    return timedelta(seconds=seconds)


def parse_window(text: str) -> Window:
    """`"20:00-06:00"` → Window (local time; an end at or before the start crosses midnight)."""
    m = WINDOW_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f'invalid window "{text}": expected "HH:MM-HH:MM", like "20:00-06:00"')
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f'invalid window "{text}": hours are 00-23 and minutes 00-59')
    if (h1, m1) == (h2, m2):
        raise ValueError(f'invalid window "{text}": start and end are equal')
    return Window(time(h1, m1), time(h2, m2))


class _Checker:
    """Validates one `[[policy]]` table, collecting errors."""

    def __init__(
        self,
        file: str,
        index: int,
        locator: Locator | None,
        vcenters: Collection[str] | None = None,
    ) -> None:
        self.known_vcenters = vcenters  # the configured names; None: not known here
        self.file = file
        self.index = index
        self.locator = locator
        self.label = f"#{index + 1}"
        self.errors: list[PolicyError] = []

    def error(self, key: str | None, message: str) -> None:
        line = self.locator.line(self.index, key or "") if self.locator else None
        self.errors.append(PolicyError(self.file, message, line, self.label, key))

    def unknown(self, table: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for k in table:
            if k not in allowed:
                self.error(f"{prefix}{k}", f"unknown key (allowed: {', '.join(allowed)})")

    def typed(self, value: Any, key: str, kind: type, what: str) -> Any:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            self.error(key, f"expected {what}, got {_describe(value)}")
            return None
        return value

    def table(self, doc: dict[str, Any], key: str, *, required: bool) -> dict[str, Any] | None:
        if key not in doc:
            if required:
                self.error(key, f"missing required table [policy.{key}]")
            return None
        return self.typed(doc[key], key, dict, "a table")

    # -- pieces ---------------------------------------------------------------------------

    def patterns(self, value: Any, key: str, sel_key: str) -> tuple[str, ...]:
        items: list[tuple[str, Any]]
        if isinstance(value, str):
            items = [(key, value)]
        elif isinstance(value, list):
            if not value:
                self.error(key, "empty list: it would match nothing")
                return ()
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        else:
            self.error(key, f"expected a string or a list of strings, got {_describe(value)}")
            return ()
        out: list[str] = []
        for k, v in items:
            if not isinstance(v, str):
                self.error(k, f"expected a string, got {_describe(v)}")
                continue
            try:
                check_pattern(sel_key, v)
            except PatternError as exc:
                self.error(k, str(exc))
                continue
            out.append(v)
        return tuple(out)

    def selector(self, t: dict[str, Any], prefix: str) -> Selector:
        allowed = (*SELECTOR_LIST_KEYS, "attributes", "templates")
        self.unknown(t, allowed, f"{prefix}.")
        lists = {k: self.patterns(t[k], f"{prefix}.{k}", k) for k in SELECTOR_LIST_KEYS if k in t}
        attrs: list[tuple[str, tuple[str, ...]]] = []
        if "attributes" in t:
            a = self.typed(t["attributes"], f"{prefix}.attributes", dict, "a table")
            if a is not None and not a:
                self.error(f"{prefix}.attributes", "empty table: it would match nothing")
            for name, v in sorted((a or {}).items()):
                ps = self.patterns(v, f"{prefix}.attributes.{_key(name)}", "attributes")
                if ps:
                    attrs.append((name, ps))
        templates = None
        if "templates" in t:
            templates = self.typed(t["templates"], f"{prefix}.templates", bool, "true or false")
        return Selector(**lists, attributes=tuple(attrs), templates=templates)

    def schedule(self, t: dict[str, Any]) -> Schedule | None:
        self.unknown(t, ("rpo", "window"), "schedule.")
        rpo = window = None
        if "rpo" not in t:
            self.error("schedule.rpo", 'missing required key (e.g. rpo = "24h")')
        else:
            try:
                rpo = parse_duration(t["rpo"])
            except ValueError as exc:
                self.error("schedule.rpo", str(exc))
        if "window" in t:
            try:
                window = parse_window(t["window"])
            except ValueError as exc:
                self.error("schedule.window", str(exc))
        return Schedule(rpo, window) if rpo is not None else None

    def trigger(self, t: dict[str, Any]) -> Trigger:
        self.unknown(t, ("on_match", "outside_window", "on_power_off"), "trigger.")
        kw: dict[str, Any] = {}
        if "on_match" in t:
            v = t["on_match"]
            if v in ON_MATCH:
                kw["on_match"] = v
            else:
                self.error(
                    "trigger.on_match", f'expected "immediate" or "schedule", got {_describe(v)}'
                )
        for k in ("outside_window", "on_power_off"):
            if k in t and self.typed(t[k], f"trigger.{k}", bool, "true or false") is not None:
                kw[k] = t[k]
        return Trigger(**kw)

    def retention(self, t: dict[str, Any], table: str = "retention") -> Retention:
        keys = ("keep_last", "daily", "weekly", "monthly", "yearly")
        self.unknown(t, keys, f"{table}.")
        kw: dict[str, int] = {}
        for k in keys:
            if k not in t:
                continue
            v = self.typed(t[k], f"{table}.{k}", int, "a whole number")
            if v is None:
                continue
            if v < 0:
                self.error(f"{table}.{k}", f"must not be negative, got {v}")
                continue
            kw[k] = v
        if not any(kw.values()) and all(k not in t or k in kw for k in keys):
            self.error(table, f"no keep rule above zero (set one of {', '.join(keys)})")
        return Retention(**kw)

    def backup(self, t: dict[str, Any]) -> BackupOptions:
        bools = ("quiesce", "quiesce_fallback", "enable_cbt")
        self.unknown(t, (*bools, "on_quiesce_failure", "exclude_disks", "transport"), "backup.")
        kw: dict[str, Any] = {}
        for k in bools:
            if k in t and self.typed(t[k], f"backup.{k}", bool, "true or false") is not None:
                kw[k] = t[k]
        kw.update(self.on_quiesce_failure(t, kw.pop("quiesce_fallback", None)))
        if "exclude_disks" in t:
            disks = self.typed(t["exclude_disks"], "backup.exclude_disks", list, "a list")
            good: list[str] = []
            for i, d in enumerate(disks or []):
                if isinstance(d, str) and DISK_RE.fullmatch(d):
                    good.append(d)
                else:
                    self.error(
                        f"backup.exclude_disks[{i}]",
                        f'expected "controller:unit" like "scsi0:1", got {_describe(d)}',
                    )
            kw["exclude_disks"] = tuple(good)
        if "transport" in t:
            modes = self.typed(t["transport"], "backup.transport", list, "a list")
            if modes is not None and not modes:
                self.error("backup.transport", "empty list: no transport could be used")
            good = []
            for i, m in enumerate(modes or []):
                if m not in TRANSPORT_MODES:
                    self.error(
                        f"backup.transport[{i}]",
                        f"unknown transport {_describe(m)} "
                        f"(expected one of {', '.join(TRANSPORT_MODES)})",
                    )
                elif m in good:
                    self.error(f"backup.transport[{i}]", f'"{m}" is listed twice')
                else:
                    good.append(m)
            kw["transport"] = tuple(good) or None
        return BackupOptions(**kw)

    def copy_to(self, value: Any) -> tuple[str, ...]:
        """`copy_to = ["offsite", ...]`: names only; whether vigil.toml has such a
        [copies.NAME] is checked where the configuration is known (protector/policyaccess)."""
        names = self.typed(value, "copy_to", list, 'a list of copy names like ["offsite"]')
        out: list[str] = []
        for i, n in enumerate(names or []):
            if not isinstance(n, str) or not COPY_NAME_RE.fullmatch(n):
                self.error(
                    f"copy_to[{i}]",
                    f"expected the name of a [copies.NAME] table of vigil.toml, got {_describe(n)}",
                )
            elif n in out:
                self.error(f"copy_to[{i}]", f'"{n}" is listed twice')
            else:
                out.append(n)
        return tuple(out)

    def on_quiesce_failure(self, t: dict[str, Any], fallback: bool | None) -> dict[str, str]:
        """`on_quiesce_failure`, or its older spelling `quiesce_fallback = true|false`; both
        at once would be two answers to one question, so that is an error."""
        if "on_quiesce_failure" not in t:
            if fallback is None:
                return {}
            return {"on_quiesce_failure": "crash-consistent" if fallback else "fail"}
        if "quiesce_fallback" in t:
            self.error(
                "backup.quiesce_fallback",
                "set either on_quiesce_failure or its older spelling quiesce_fallback, not both",
            )
        v = t["on_quiesce_failure"]
        if v not in ON_QUIESCE_FAILURE:
            self.error(
                "backup.on_quiesce_failure",
                f"expected one of {', '.join(repr(x) for x in ON_QUIESCE_FAILURE)}, "
                f"got {_describe(v)}",
            )
            return {}
        return {"on_quiesce_failure": v}

    def vcenters(self, value: Any) -> tuple[str, ...]:
        """`vcenters = ["east", ...]`: names of configured vCenters (vigil.toml)."""
        names = self.typed(value, "vcenters", list, "a list of vCenter names")
        if names is None:
            return ()
        if not names:
            self.error("vcenters", "empty list: it would match nothing (leave it out for all)")
        out: list[str] = []
        known = self.known_vcenters
        for i, n in enumerate(names):
            if not isinstance(n, str):
                self.error(f"vcenters[{i}]", f"expected a vCenter name, got {_describe(n)}")
            elif known is not None and n not in known:
                have = ", ".join(known)
                lone = ' (a lone [vcenter] table is named "default")'
                hint = lone if "default" in known else ""
                self.error(
                    f"vcenters[{i}]",
                    f'no vCenter named "{n}" is configured (configured: {have}){hint}',
                )
            elif n not in out:
                out.append(n)
        return tuple(out)

    # -- the whole policy -----------------------------------------------------------------

    def policy(self, doc: Any) -> Policy | None:
        if not isinstance(doc, dict):
            self.error(None, f"expected a table, got {_describe(doc)}")
            return None
        name = doc.get("name")
        if name is None:
            self.error("name", "missing required key")
        elif not isinstance(name, str) or not NAME_RE.fullmatch(name):
            self.error(
                "name",
                f"invalid name {_describe(name)}: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit",
            )
        else:
            self.label = name
        self.unknown(doc, POLICY_KEYS, "")
        priority = None
        if "priority" not in doc:
            self.error("priority", "missing required key (e.g. priority = 10)")
        else:
            priority = self.typed(doc["priority"], "priority", int, "a whole number")
        enabled = True
        if "enabled" in doc:
            enabled = self.typed(doc["enabled"], "enabled", bool, "true or false")

        select = exclude = None
        t = self.table(doc, "select", required=True)
        if t is not None:
            select = self.selector(t, "select")
            if select.is_empty and not any(
                e.key and e.key.startswith("select.") for e in self.errors
            ):
                self.error(
                    "select",
                    "no selection criterion: a policy must select something "
                    '(folders = ["/**"] selects every VM)',
                )
        t = self.table(doc, "exclude", required=False)
        exclude = self.selector(t, "exclude") if t is not None else Selector()
        t = self.table(doc, "schedule", required=True)
        schedule = self.schedule(t) if t is not None else None
        t = self.table(doc, "trigger", required=False)
        trigger = self.trigger(t) if t is not None else Trigger()
        t = self.table(doc, "retention", required=True)
        retention = self.retention(t) if t is not None else None
        t = self.table(doc, "backup", required=False)
        backup = self.backup(t) if t is not None else BackupOptions()
        vcenters = self.vcenters(doc["vcenters"]) if "vcenters" in doc else ()
        copy_to = self.copy_to(doc["copy_to"]) if "copy_to" in doc else ()
        copy_retention = None
        t = self.table(doc, "copy_retention", required=False)
        if t is not None:
            copy_retention = self.retention(t, "copy_retention")
            if not doc.get("copy_to"):
                self.error(
                    "copy_retention",
                    "applies only to a policy with copy_to (the copies its points go to)",
                )

        if self.errors:
            return None
        assert select is not None and schedule is not None and retention is not None
        return Policy(
            name=name,
            priority=priority,
            enabled=enabled,
            select=select,
            exclude=exclude,
            schedule=schedule,
            trigger=trigger,
            retention=retention,
            backup=backup,
            vcenters=vcenters,
            source=self.file,
            copy_to=copy_to,
            copy_retention=copy_retention,
        )


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def parse_document(
    doc: dict[str, Any],
    file: str,
    text: str | None = None,
    *,
    vcenters: Collection[str] | None = None,
) -> tuple[list[Policy], list[PolicyError]]:
    """Validate one parsed TOML document; `text` (the source) helps place errors on lines;
    `vcenters`, the configured vCenter names, are the only ones a policy may name (None:
    names are not checked, the caller does not know them)."""
    errors: list[PolicyError] = []
    for k in doc:
        if k != "policy":
            errors.append(
                PolicyError(
                    file, "unknown key (a policy file holds [[policy]] tables)", None, None, k
                )
            )
    raw = doc.get("policy", [])
    if not isinstance(raw, list):
        errors.append(
            PolicyError(file, "must be an array of tables: write [[policy]]", None, None, "policy")
        )
        return [], errors
    locator = Locator(text) if text is not None else None
    policies: list[Policy] = []
    for i, entry in enumerate(raw):
        checker = _Checker(file, i, locator, vcenters)
        p = checker.policy(entry)
        errors.extend(checker.errors)
        if p is not None:
            policies.append(p)
    return policies, errors
