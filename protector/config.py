"""vigil's own configuration file (`vigil.toml`): loading and validation.

Every error names the file and the key path at fault; unknown keys are errors,
because a typo must never silently change what gets protected. Secrets are read
from an environment variable or a file named here, never from the file itself
and never from the command line.

Over 400 lines on purpose: the schema table and the one pass that validates it stay
together, so every cross-section check (limits vs cluster slots, transports vs their
tables, the repository vs its copies) is read in one place; the shared helpers live in
`config_checks.py`, the repository tables in `repoconfig.py`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig
from disk_io.transport import check_vddk_modes
from disk_io.vddk.thumbprint import thumbprint_hash
from protector.config_checks import (
    ConfigError,
    KeyLines,
    _did_you_mean,
    ownership_problem,
    parse_hhmm,
    read_secret_file,
)
from protector.repoconfig import (
    REPOSITORY_KEYS,
    RepositoryConfig,
    parse_copies,
    repository_table_problems,
)

DEFAULT_PATH = "vigil.toml"
TRANSPORT_MODES = ("vddk", "http", "file")
# The name of the vCenter a lone `[vcenter]` table configures (policies' `vcenters` and
# `--vcenter` may use it); `[vcenters.NAME]` tables name each of several.
DEFAULT_VCENTER = "default"
VCENTER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class VcenterConfig:
    url: str
    user: str
    password_env: str = ""
    password_file: str = ""
    verify_tls: bool = True
    thumbprint: str = ""
    ca_file: str = ""
    connect_timeout: float = 10.0
    # Its name: the NAME of `[vcenters.NAME]`, or DEFAULT_VCENTER for a lone `[vcenter]`.
    name: str = "default"
    # The table it came from ("vcenter" or "vcenters.NAME"): the prefix of every key an
    # error message names, so the admin edits the right table.
    table: str = field(default="vcenter", compare=False)
    # The file these settings came from, so a secret that cannot be read is reported there.
    config_path: str = field(default="vcenter", compare=False)

    def key(self, key: str) -> str:
        """The key path of one of its settings in the file, "vcenters.b.url" say."""
        return f"{self.table}.{key}"

    def password(self) -> str:
        """Read the secret now (never stored on this object)."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    self.config_path,
                    [
                        f"{self.key('password_env')}: environment variable {self.password_env}"
                        f" is not set; export {self.password_env}=… (or set "
                        f"{self.key('password_file')})"
                    ],
                )
            return value
        return read_secret_file(self.password_file, self.key("password_file"), self.config_path)


@dataclass(frozen=True)
class TransportConfig:
    modes: tuple[str, ...] = ("vddk", "http", "file")
    vddk_libdir: str = "/opt/vmware-vix-disklib-distrib"
    file_datastores: dict[str, str] = field(default_factory=dict)
    vddk_modes: str | None = None  # [transport.vddk] modes: VDDK's own, e.g. "nbdssl:nbd"
    vddk_thumbprint: str = "auto"  # [transport.vddk] thumbprint: "auto" | "sha1" | "sha256"


@dataclass(frozen=True)
class LimitsConfig:
    concurrent_backups: int = 4
    per_host: int = 2
    per_datastore: int = 2
    io_threads: int = 8


@dataclass(frozen=True)
class DaemonConfig:
    status_listen: str = "127.0.0.1:9273"
    status_token_env: str = ""
    tag_interval: float = 60.0
    reconcile_interval: float = 600.0
    prune_at: str = "07:00"
    retry_attempts: int = 3
    retry_backoff: float = 60.0
    # After the last retry a VM waits retry_backoff doubled per consecutive failure, at most
    # this long (or its RPO, whichever is smaller) before it is tried again.
    failure_cooldown_max: float = 3600.0
    # How long the daily prune may hold back new backups so its chunk sweep gets the lock.
    prune_max_pause: float = 900.0


@dataclass(frozen=True)
class NotifyConfig:
    """`[notify]`: Apprise URLs (docs/notifications.md). The URLs usually hold a token or a
    password, so they come from the environment or a 0600 file; `urls` in the config file
    is for URLs without a secret (a loopback webhook, say)."""

    inline_urls: tuple[str, ...] = ()
    urls_env: str = ""
    urls_file: str = ""
    status_url: str = ""
    min_interval: float = 300.0  # at most one message per event kind this often
    group_window: float = 30.0  # events collected this long into one message
    config_path: str = field(default="notify", compare=False)

    @property
    def enabled(self) -> bool:
        return bool(self.inline_urls or self.urls_env or self.urls_file)

    def urls(self) -> list[str]:
        """Read the URLs now (never stored on this object): whitespace-separated in the
        variable, one a line in the file (`#` starts a comment)."""
        out = list(self.inline_urls)
        if self.urls_env:
            value = os.environ.get(self.urls_env)
            if value is None:
                raise ConfigError(
                    self.config_path,
                    [f"notify.urls_env: environment variable {self.urls_env} is not set"],
                )
            out += value.split()
        if self.urls_file:
            text = read_secret_file(self.urls_file, "notify.urls_file", self.config_path)
            for line in text.splitlines():
                out += line.partition("#")[0].split()
        return out


def _parse_notify(n: dict[str, Any], base: Path, problems: list[str]) -> NotifyConfig | None:
    if not n:
        return None
    from urllib.parse import urlsplit

    urls = n.pop("urls", [])
    for i, url in enumerate(urls):
        if not isinstance(url, str) or "://" not in url:
            problems.append(f"notify.urls[{i}]: must be an Apprise URL like json://host/path")
        elif urlsplit(url).password:
            problems.append(
                f"notify.urls[{i}]: holds a password; put the URL in notify.urls_env or "
                "notify.urls_file (mode 0600) instead, secrets never go in this file"
            )
    for key in ("min_interval", "group_window"):
        if key in n and n[key] < 0:
            problems.append(f"notify.{key}: must be 0 seconds or more, got {n[key]}")
    if n.get("urls_file"):
        n["urls_file"] = str(base / n["urls_file"])
    return NotifyConfig(inline_urls=tuple(u for u in urls if isinstance(u, str)), **n)


@dataclass(frozen=True)
class Config:
    path: str
    vcenter: VcenterConfig
    repository: RepositoryConfig
    policies_path: str
    transport: TransportConfig = TransportConfig()
    limits: LimitsConfig = LimitsConfig()
    daemon: DaemonConfig = DaemonConfig()
    # `[cluster]`: several nodes on one PostgreSQL (docs/cluster.md); None = one machine.
    cluster: ClusterConfig | None = None
    state_dir: str = ""  # [state] dir; "" = $VIGIL_STATE_DIR or /var/lib/vigil/state
    notify: NotifyConfig | None = None  # [notify]; None = no notifications
    # [copies.NAME]: offsite copies (`vigil copy --to NAME`), each a complete repository.
    copies: dict[str, RepositoryConfig] = field(default_factory=dict, hash=False)
    # Every configured vCenter by name, in file order; `vcenter` is the first of them (the
    # one a command talks to unless told otherwise: `for_vcenter`).
    vcenters: dict[str, VcenterConfig] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.vcenters:  # built in code with one vcenter= only
            object.__setattr__(self, "vcenters", {self.vcenter.name: self.vcenter})

    @property
    def several_vcenters(self) -> bool:
        """Whether output must say which vCenter a VM is on."""
        return len(self.vcenters) > 1

    def for_vcenter(self, name: str) -> Config:
        """This configuration aimed at one vCenter: `vcenter` is that one, so everything
        that talks to "the" vCenter (sessions, the watcher, a backup) talks to it."""
        vc = self.vcenters.get(name)
        if vc is None:
            raise ConfigError(
                self.path,
                [
                    f"vcenters: no vCenter named {name!r} is configured (configured: "
                    f"{', '.join(self.vcenters)})" + _did_you_mean(name, list(self.vcenters))
                ],
            )
        return replace(self, vcenter=vc)


# Each section: key -> (type(s), required, default)
_SCHEMA: dict[str, dict[str, tuple[Any, bool]]] = {
    "vcenter": {
        "url": (str, True),
        "user": (str, True),
        "password_env": (str, False),
        "password_file": (str, False),
        "verify_tls": (bool, False),
        "thumbprint": (str, False),
        "ca_file": (str, False),
        "connect_timeout": ((int, float), False),
    },
    "repository": REPOSITORY_KEYS,
    "policies": {"path": (str, True)},
    "state": {"dir": (str, False)},
    "notify": {
        "urls": (list, False),
        "urls_env": (str, False),
        "urls_file": (str, False),
        "status_url": (str, False),
        "min_interval": ((int, float), False),
        "group_window": ((int, float), False),
    },
    "transport": {
        "modes": (list, False),
        "vddk_libdir": (str, False),
        "file": (dict, False),
        "vddk": (dict, False),
    },
    "limits": {
        "concurrent_backups": (int, False),
        "per_host": (int, False),
        "per_datastore": (int, False),
        "io_threads": (int, False),
    },
    "daemon": {
        "status_listen": (str, False),
        "status_token_env": (str, False),
        "tag_interval": ((int, float), False),
        "reconcile_interval": ((int, float), False),
        "prune_at": (str, False),
        "retry_attempts": (int, False),
        "retry_backoff": ((int, float), False),
        "failure_cooldown_max": ((int, float), False),
        "prune_max_pause": ((int, float), False),
    },
}
_REQUIRED_SECTIONS = ("repository", "policies")  # and [vcenter] or [vcenters.NAME]
# Parsed apart, not through _SCHEMA: cluster.config has its own keys and checks, and
# [copies.NAME] and [vcenters.NAME] are tables of tables.
_OTHER_SECTIONS = ("cluster", "copies", "vcenters")


def _type_name(t: Any) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", list: "a list"}
    if isinstance(t, tuple):
        return "a number"
    return names.get(t, "a table")


def resolve_path(cli_path: str | None) -> str:
    return cli_path or os.environ.get("VIGIL_CONFIG") or DEFAULT_PATH


_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)")


def load_config(path: str | os.PathLike[str]) -> Config:
    path = str(path)
    try:
        problem = ownership_problem(Path(path))
        if problem:
            raise ConfigError(path, [problem])
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            str(Path(path).absolute()),
            [
                "configuration file not found; pass --config PATH or set VIGIL_CONFIG, or "
                "start from config.example.toml"
            ],
        ) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: not UTF-8 text ({exc.reason})"]) from None
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_AT.search(str(exc))
        msg = _TOML_AT.sub("", str(exc))
        line = [int(m.group(1))] if m else None
        raise ConfigError(path, [f"not valid TOML: {msg}"], line) from None
    return parse_config(doc, path, text)


def _thumbprint_problem(url: str, thumbprint: str, exc: ValueError, prefix: str) -> str:
    from urllib.parse import urlsplit

    digits = thumbprint.replace(":", "").replace(" ", "")
    if len(digits) == 40 and all(c in "0123456789abcdefABCDEF" for c in digits):
        parts = urlsplit(url)
        host = f"{parts.hostname or 'VCENTER'}:{parts.port or 443}"
        return (
            f"{prefix}.thumbprint: this is a SHA-1 thumbprint (40 hex digits, what the vSphere "
            f"Client shows by default); vigil pins SHA-256: `openssl s_client -connect {host} "
            "</dev/null | openssl x509 -noout -fingerprint -sha256` prints it"
        )
    return f"{prefix}.thumbprint: {exc}"


def parse_config(doc: dict[str, Any], path: str, text: str = "") -> Config:
    try:
        return _parse_config(doc, path)
    except ConfigError as exc:
        if not text:
            raise
        raise ConfigError(exc.path, exc.problems, KeyLines(text).locate(exc.problems)) from None


def _parse_config(doc: dict[str, Any], path: str) -> Config:
    problems: list[str] = []
    base = Path(path).resolve().parent

    known = [*_SCHEMA, *_OTHER_SECTIONS]
    for section in doc:
        if section not in known:
            problems.append(
                f"{section}: unknown section (known: {', '.join(known)})"
                + _did_you_mean(section, known)
            )
    for section in _REQUIRED_SECTIONS:
        if section not in doc:
            problems.append(f"[{section}]: required section is missing")

    values: dict[str, dict[str, Any]] = {}
    for section, schema in _SCHEMA.items():
        if section == "vcenter" and section not in doc:
            continue
        table = doc.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"{section}: must be a table")
            continue
        values[section] = _typed_table(table, schema, section, problems, required=section in doc)

    vcenters = _parse_vcenters(doc, path, base, problems)
    r = values.get("repository", {})
    if "repository" in doc:
        problems += repository_table_problems(r, "repository", base)

    t = values.get("transport", {})
    modes = t.get("modes")
    if modes is not None:
        bad = [m for m in modes if m not in TRANSPORT_MODES]
        if bad or not modes:
            problems.append(
                f"transport.modes: each must be one of {', '.join(TRANSPORT_MODES)}, got {modes!r}"
            )
    file_ds: dict[str, str] = {}
    ft = t.get("file", {})
    for key, val in ft.items():
        if key != "datastores" or not isinstance(val, dict):
            problems.append(f"transport.file.{key}: unknown key (known: datastores)")
            continue
        for ds, mount in val.items():
            if not isinstance(mount, str):
                problems.append(f"transport.file.datastores.{ds}: must be a path string")
            else:
                file_ds[ds] = str(base / mount)

    vddk_t = t.get("vddk", {})
    vddk_modes: str | None = None
    vddk_thumb = "auto"
    for key, val in vddk_t.items():
        try:
            if key == "modes":
                vddk_modes = check_vddk_modes(val)
            elif key == "thumbprint":
                vddk_thumb = val
                thumbprint_hash(0, val if isinstance(val, str) else repr(val))
            else:
                problems.append(f"transport.vddk.{key}: unknown key (known: modes, thumbprint)")
        except ValueError as exc:
            problems.append(str(exc))

    lim = values.get("limits", {})
    for key, val in lim.items():
        if val < 1:
            problems.append(f"limits.{key}: must be at least 1, got {val}")

    d = values.get("daemon", {})
    listen = d.get("status_listen")
    if listen is not None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            problems.append(
                "daemon.status_listen: must be HOST:PORT with a port 0-65535 (0: any free "
                f'one), like "127.0.0.1:9273", got {listen!r}'
            )
        else:
            from watcher.endpoint import is_loopback

            if not is_loopback(host.strip("[]")) and not d.get("status_token_env"):
                problems.append(
                    f"daemon.status_listen: {listen} is reachable from the network; set "
                    "daemon.status_token_env so the status page requires a bearer token"
                )

    prune_at = d.get("prune_at")
    if prune_at is not None and parse_hhmm(prune_at) is None:
        problems.append(
            f'daemon.prune_at: must be a 24-hour time "HH:MM" such as "07:00", got {prune_at!r}'
        )
    if d.get("retry_attempts", 1) < 1:
        problems.append(f"daemon.retry_attempts: must be at least 1, got {d['retry_attempts']}")
    intervals = ("tag_interval", "reconcile_interval")
    for key in ("retry_backoff", "failure_cooldown_max", "prune_max_pause", *intervals):
        if key in d and d[key] <= 0:
            problems.append(f"daemon.{key}: must be more than 0 seconds, got {d[key]}")

    copies = parse_copies(doc.get("copies", {}), base, path, problems)

    p = values.get("policies", {})
    if "path" in p:
        p["path"] = str(base / p["path"])

    cluster = _parse_cluster(doc, base, lim, problems) if "cluster" in doc else None
    notify = _parse_notify(values.get("notify", {}), base, problems)

    if problems:
        raise ConfigError(path, problems)

    first = next(iter(vcenters.values()))
    return Config(
        path=path,
        vcenter=first,
        vcenters=vcenters,
        repository=RepositoryConfig(**r, config_path=path),
        policies_path=p["path"],
        transport=TransportConfig(
            modes=tuple(modes) if modes else TransportConfig.modes,
            vddk_libdir=t.get("vddk_libdir", TransportConfig.vddk_libdir),
            file_datastores=file_ds,
            vddk_modes=vddk_modes,
            vddk_thumbprint=vddk_thumb,
        ),
        limits=LimitsConfig(**lim),
        daemon=DaemonConfig(**d),
        cluster=cluster,
        notify=replace(notify, config_path=path) if notify else None,
        state_dir=str(base / values["state"]["dir"]) if "dir" in values.get("state", {}) else "",
        copies=copies,
    )


def _typed_table(
    table: dict[str, Any],
    schema: dict[str, tuple[Any, bool]],
    prefix: str,
    problems: list[str],
    *,
    required: bool,
) -> dict[str, Any]:
    """A table's keys checked against its schema: unknown keys, types, required keys."""
    out: dict[str, Any] = {}
    for key, val in table.items():
        if key not in schema:
            problems.append(
                f"{prefix}.{key}: unknown key (known: {', '.join(sorted(schema))})"
                + _did_you_mean(key, list(schema))
            )
            continue
        typ = schema[key][0]
        ok = isinstance(val, typ) and not (typ is int and isinstance(val, bool))
        if isinstance(typ, tuple) and isinstance(val, bool):
            ok = False
        if not ok:
            problems.append(f"{prefix}.{key}: must be {_type_name(typ)}, got {val!r}")
            continue
        out[key] = val
    if required:
        for key, (_, needed) in schema.items():
            if needed and key not in table:
                problems.append(f"{prefix}.{key}: required key is missing")
    return out


def _parse_vcenters(
    doc: dict[str, Any], path: str, base: Path, problems: list[str]
) -> dict[str, VcenterConfig]:
    """`[vcenter]` (one vCenter, named DEFAULT_VCENTER) or `[vcenters.NAME]` tables (each
    with the keys of `[vcenter]`), never both: which one a command meant would be a guess."""
    one, many = doc.get("vcenter"), doc.get("vcenters")
    if one is not None and many is not None:
        problems.append(
            "vcenters: set either [vcenter] (one vCenter) or [vcenters.NAME] tables (one per "
            "vCenter), not both; move [vcenter] into a [vcenters.NAME] table"
        )
        return {}
    if one is None and many is None:
        problems.append("[vcenter]: required section is missing (or [vcenters.NAME] tables)")
        return {}
    tables: dict[str, tuple[str, Any]]
    if one is not None:
        if not isinstance(one, dict):
            return {}  # "vcenter: must be a table", said by the schema pass
        tables = {DEFAULT_VCENTER: ("vcenter", one)}
    elif not isinstance(many, dict) or not many:
        problems.append(
            "vcenters: must hold one [vcenters.NAME] table per vCenter, like "
            '[vcenters.east] url = "https://vc-east.example.com/sdk"'
        )
        return {}
    else:
        tables = {name: (f"vcenters.{name}", t) for name, t in many.items()}
    out: dict[str, VcenterConfig] = {}
    urls: dict[str, str] = {}
    for name, (prefix, table) in tables.items():
        if not VCENTER_NAME_RE.fullmatch(name):
            problems.append(
                f"{prefix}: invalid name {name!r}: use letters, digits, '_' and '-', "
                "starting with a letter or digit"
            )
            continue
        if not isinstance(table, dict):
            problems.append(f"{prefix}: must be a table")
            continue
        v = _typed_table(table, _SCHEMA["vcenter"], prefix, problems, required=True)
        before = len(problems)
        _check_vcenter(v, prefix, base, problems)
        if len(problems) > before or "url" not in v or "user" not in v:
            continue
        from watcher.endpoint import Endpoint

        # One vCenter under two names would be watched, and its VMs backed up, twice.
        where = Endpoint(v["url"]).base_url
        if where in urls:
            problems.append(
                f"{prefix}.url: the same vCenter as vcenters.{urls[where]} ({v['url']}); "
                "configure each vCenter once"
            )
            continue
        urls[where] = name
        out[name] = VcenterConfig(**v, name=name, table=prefix, config_path=path)
    return out


def _check_vcenter(v: dict[str, Any], prefix: str, base: Path, problems: list[str]) -> None:
    """One vCenter table's values (paths made absolute in `v`)."""
    if "password_env" in v and "password_file" in v:
        problems.append(f"{prefix}: set password_env or password_file, not both")
    elif "password_env" not in v and "password_file" not in v:
        problems.append(
            f"{prefix}.password_env: required (or {prefix}.password_file); "
            "the password itself never goes in this file"
        )
    if "url" in v:
        from watcher.endpoint import Endpoint  # not watcher.soap: no HTTP stack to load a file

        try:
            Endpoint(v["url"], thumbprint=v.get("thumbprint", ""))
        except ValueError as exc:
            if "thumbprint" in str(exc):
                problems.append(_thumbprint_problem(v["url"], v.get("thumbprint", ""), exc, prefix))
            else:
                problems.append(f"{prefix}.url: {exc}")
    if v.get("password_file"):
        v["password_file"] = str(base / v["password_file"])
    if v.get("ca_file"):
        v["ca_file"] = str(base / v["ca_file"])
        if not Path(v["ca_file"]).is_file():
            problems.append(
                f"{prefix}.ca_file: {v['ca_file']} does not exist; put the vCenter CA "
                f"certificate (PEM) there, or pin {prefix}.thumbprint instead"
            )


def _parse_cluster(
    doc: dict[str, Any], base: Path, lim: dict[str, Any], problems: list[str]
) -> ClusterConfig | None:
    """`[cluster]` through cluster.config (errors name `cluster.KEY`). The one-machine
    limits carry over: unless the table sets its own, `limits.per_host` and
    `limits.per_datastore` become the cluster-wide slots per host and per datastore, and
    `limits.concurrent_backups` the backups one worker runs at once."""
    from cluster.config import ClusterConfigError, parse_cluster  # stdlib only: cheap

    table = doc["cluster"]
    try:
        cfg = parse_cluster(table)
    except ClusterConfigError as exc:
        problems.append(str(exc))
        return None
    carried = {
        "host_slots": lim.get("per_host", LimitsConfig.per_host),
        "datastore_slots": lim.get("per_datastore", LimitsConfig.per_datastore),
        "worker_concurrency": lim.get("concurrent_backups", LimitsConfig.concurrent_backups),
    }
    changes: dict[str, Any] = {k: v for k, v in carried.items() if k not in table}
    if cfg.database_url_file:
        changes["database_url_file"] = str(base / cfg.database_url_file)
    return replace(cfg, **changes)


def endpoint_of(cfg: Config) -> Any:
    from watcher.endpoint import Endpoint

    return Endpoint(
        cfg.vcenter.url,
        verify_tls=cfg.vcenter.verify_tls,
        thumbprint=cfg.vcenter.thumbprint,
        ca_file=cfg.vcenter.ca_file,
        connect_timeout=cfg.vcenter.connect_timeout,
    )
