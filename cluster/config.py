"""The `[cluster]` table of vigil.toml: pure parsing with errors that name the key.

    [cluster]
    database_url_env = "VIGIL_DATABASE_URL"   # or database_url_file = "/etc/vigil/db-url"
    node = "proxy-1"                          # default: the host name

The database URL carries a password, so it is never a value in the file: it comes from an
environment variable or from a private file (mode 0600 or stricter), and anything printed
uses `redact_url`. An absent `[cluster]` table means one machine (SQLite, in-process runner).
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL_ENV = "VIGIL_DATABASE_URL"
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClusterConfigError(ValueError):
    """One problem in the `[cluster]` table; the message starts with the key at fault."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


@dataclass(frozen=True)
class ClusterConfig:
    node: str
    database_url_env: str = DEFAULT_URL_ENV
    database_url_file: str = ""
    # Cluster-wide concurrency: backups at once reading from one ESXi host / one datastore.
    host_slots: int = 2
    datastore_slots: int = 4
    # Backups one worker process runs at once.
    worker_concurrency: int = 2
    # How long SIGTERM waits for running backups before cancelling them (they are retried).
    shutdown_timeout_s: float = 60.0
    # A job whose worker has not heart-beaten for this long is requeued.
    stalled_after_s: float = 30.0
    # Finished job rows kept this long (cluster/retention.py): succeeded and cancelled
    # backups, then failed and aborted ones (kept longer: worth looking into).
    job_retention_days: float = 7.0
    failed_job_retention_days: float = 30.0


_INT_KEYS = {"host_slots": (1, 1000), "datastore_slots": (1, 1000), "worker_concurrency": (1, 256)}
_FLOAT_KEYS = {
    "shutdown_timeout_s": (0.0, 86400.0),
    "stalled_after_s": (5.0, 3600.0),
    "job_retention_days": (1.0, 3650.0),
    "failed_job_retention_days": (1.0, 3650.0),
}
_STR_KEYS = {"node", "database_url_env", "database_url_file"}
_FORBIDDEN = {"database_url", "url", "password", "dsn"}


def parse_cluster(table: Mapping[str, Any] | None, *, hostname: str | None = None) -> ClusterConfig:
    """The `[cluster]` table as a ClusterConfig; `None` when the table is absent is the
    caller's business (one machine). Raises ClusterConfigError naming `cluster.KEY`."""
    if table is None:
        table = {}
    if not isinstance(table, Mapping):
        raise ClusterConfigError("cluster", "must be a table ([cluster])")
    for key in table:
        if key in _FORBIDDEN:
            raise ClusterConfigError(
                f"cluster.{key}",
                "secrets are not written in the configuration file; put the URL in an "
                "environment variable named by cluster.database_url_env, or in a private "
                "file named by cluster.database_url_file",
            )
        if key not in _STR_KEYS and key not in _INT_KEYS and key not in _FLOAT_KEYS:
            known = ", ".join(sorted(_STR_KEYS | set(_INT_KEYS) | set(_FLOAT_KEYS)))
            raise ClusterConfigError(f"cluster.{key}", f"unknown key (known: {known})")
    values: dict[str, Any] = {}
    for key in _STR_KEYS & set(table):
        value = table[key]
        if not isinstance(value, str):
            raise ClusterConfigError(f"cluster.{key}", f"must be a string, not {_kind(value)}")
        values[key] = value
    for key, (lo, hi) in _INT_KEYS.items():
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ClusterConfigError(
                    f"cluster.{key}", f"must be an integer, not {_kind(value)}"
                )
            if not lo <= value <= hi:
                raise ClusterConfigError(f"cluster.{key}", f"must be between {lo} and {hi}")
            values[key] = value
    for key, (flo, fhi) in _FLOAT_KEYS.items():
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ClusterConfigError(f"cluster.{key}", f"must be a number, not {_kind(value)}")
            if not flo <= value <= fhi:
                raise ClusterConfigError(f"cluster.{key}", f"must be between {flo:g} and {fhi:g}")
            values[key] = float(value)

    node = values.pop("node", None)
    if node is None:
        node = hostname if hostname is not None else socket.gethostname()
        node = node.split(".", 1)[0]
        key_hint = "cluster.node (defaulted from the host name)"
    else:
        key_hint = "cluster.node"
    if not NODE_NAME.match(node):
        raise ClusterConfigError(
            key_hint,
            f"{node!r} is not a usable node name (letters, digits, '.', '_', '-'; at most 63)",
        )
    env = values.get("database_url_env", DEFAULT_URL_ENV)
    if not ENV_NAME.match(env):
        raise ClusterConfigError("cluster.database_url_env", f"{env!r} is not a variable name")
    if "database_url_env" in values and values.get("database_url_file"):
        raise ClusterConfigError(
            "cluster.database_url_file", "set either database_url_env or database_url_file"
        )
    return ClusterConfig(node=node, **values)


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), f"a {type(value).__name__}"
    )


def database_url(cfg: ClusterConfig, environ: Mapping[str, str] | None = None) -> str:
    """The database URL from the file or the environment, validated. The error names where
    the URL should have come from and never quotes it."""
    if cfg.database_url_file:
        url = _read_private(cfg.database_url_file)
        origin = f"cluster.database_url_file ({cfg.database_url_file})"
    else:
        env = os.environ if environ is None else environ
        url = env.get(cfg.database_url_env, "").strip()
        origin = f"cluster.database_url_env ({cfg.database_url_env})"
        if not url:
            raise ClusterConfigError(
                origin.split(" ", 1)[0],
                f"the environment variable {cfg.database_url_env} is not set; export "
                f"{cfg.database_url_env}=postgresql://USER:PASSWORD@HOST:5432/DATABASE",
            )
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ClusterConfigError(
            origin.split(" ", 1)[0],
            f"the URL in {origin} must start with postgresql:// (got scheme {parts.scheme!r})",
        )
    if not parts.hostname and "host=" not in parts.query:
        raise ClusterConfigError(origin.split(" ", 1)[0], f"the URL in {origin} names no host")
    return url


def _read_private(path: str) -> str:
    key = "cluster.database_url_file"
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise ClusterConfigError(
                    key,
                    f"{path} is readable by others (mode {stat.filemode(mode)}); chmod 600 {path}",
                )
            text = f.read().strip()
    except OSError as exc:
        raise ClusterConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not text:
        raise ClusterConfigError(key, f"{path} is empty")
    return text


def redact_url(url: str) -> str:
    """The URL with its password (and any `password=` query parameter) blanked, for logs,
    errors and status output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":<redacted>"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2<redacted>", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
