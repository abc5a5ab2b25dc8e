"""S3 repository settings: the `s3://BUCKET/PREFIX` url and the `[repository.s3]` table.

Pure apart from reading the two credentials (environment or a private file). Secrets never
appear in a repr, a log line or an error message; errors name the setting at fault.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from repository.errors import RepositoryError

LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
# Keys under these prefixes never carry a retention: lock objects and the write-once probe
# must be deletable by their owner, or a crashed writer would block the bucket for days.
DEFAULT_UNLOCKED_PREFIXES = ("locks/",)


class S3ConfigError(RepositoryError):
    """A `[repository.s3]` setting or the repository url is wrong; the message names it."""


@dataclass(frozen=True)
class S3Options:
    bucket: str
    prefix: str  # "" or ends with "/"
    endpoint: str | None = None  # None: AWS's regional endpoint
    region: str = "us-east-1"
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    object_lock_days: int = 0
    object_lock_mode: str = "COMPLIANCE"
    # Retention is extended in generations of this many days (see retention.py).
    object_lock_generation_days: int = 7
    max_connections: int = 8  # the I/O limiter's width: one connection per I/O thread
    max_attempts: int = 6  # botocore's standard retry mode: backoff on 5xx/throttling
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    ca_file: str | None = None
    path_style: bool = True  # S3 look-alikes rarely serve virtual-hosted buckets
    unlocked_prefixes: tuple[str, ...] = DEFAULT_UNLOCKED_PREFIXES

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def locking(self) -> bool:
        return self.object_lock_days > 0


def parse_url(url: str, where: str = "repository") -> tuple[str, str]:
    """(bucket, prefix) of `s3://BUCKET/PREFIX`; the prefix gets a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise S3ConfigError(f"{where}.url {url!r}: expected s3://BUCKET/PREFIX")
    if parts.query or parts.fragment:
        raise S3ConfigError(f"{where}.url {url!r}: no query or fragment allowed")
    prefix = parts.path.strip("/")
    if ".." in prefix.split("/"):
        raise S3ConfigError(f"{where}.url {url!r}: '..' in the prefix")
    return parts.netloc, f"{prefix}/" if prefix else ""


def check_endpoint(endpoint: str, where: str = "repository.s3") -> str:
    """https anywhere; http only to a loopback address (credentials and data in clear)."""
    parts = urlsplit(endpoint)
    if parts.scheme == "https" and parts.hostname:
        return endpoint
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return endpoint
        raise S3ConfigError(
            f"{where}.endpoint {endpoint!r}: http:// is allowed only for a loopback "
            "address (127.0.0.1, ::1, localhost); use https:// for a remote service"
        )
    raise S3ConfigError(f"{where}.endpoint {endpoint!r}: expected https://HOST[:PORT]")


def read_secret(table: Mapping[str, Any], name: str, where: str) -> str | None:
    """`NAME_env` (an environment variable's name) or `NAME_file` (a private file)."""
    env, path = table.get(f"{name}_env"), table.get(f"{name}_file")
    if env and path:
        raise S3ConfigError(f"{where}.{name}_env and {name}_file: set one, not both")
    if env:
        value = os.environ.get(str(env))
        if not value:
            raise S3ConfigError(
                f"{where}.{name}_env: environment variable {env} is not set; "
                f"export {env}=… (or set {where}.{name}_file)"
            )
        return value
    if path:
        p = Path(str(path)).expanduser()
        try:
            st = p.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise S3ConfigError(
                    f"{where}.{name}_file {p}: readable by others "
                    f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 {p}"
                )
            value = p.read_text().strip()
        except OSError as exc:
            raise S3ConfigError(f"{where}.{name}_file {p}: {exc.strerror}") from None
        if not value:
            raise S3ConfigError(f"{where}.{name}_file {p}: empty")
        return value
    return None


_INT_KEYS = {
    "object_lock_days": 0,
    "object_lock_generation_days": 1,
    "max_connections": 1,
    "max_attempts": 1,
}
_KNOWN = {
    "endpoint",
    "region",
    "access_key_env",
    "access_key_file",
    "secret_key_env",
    "secret_key_file",
    "object_lock_mode",
    "connect_timeout",
    "read_timeout",
    "ca_file",
    "path_style",
    *_INT_KEYS,
}


def options_from_config(
    url: str, table: Mapping[str, Any], where: str = "repository.s3"
) -> S3Options:
    """Validate the url and the `[repository.s3]` table; read the credentials."""
    bucket, prefix = parse_url(url, where.removesuffix(".s3"))
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise S3ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    kw: dict[str, Any] = {}
    if table.get("endpoint"):
        kw["endpoint"] = check_endpoint(str(table["endpoint"]), where)
    if table.get("region"):
        kw["region"] = str(table["region"])
    for key, low in _INT_KEYS.items():
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise S3ConfigError(f"{where}.{key} = {value!r}: expected an integer >= {low}")
            kw[key] = value
    mode = str(table.get("object_lock_mode", "COMPLIANCE")).upper()
    if mode not in LOCK_MODES:
        raise S3ConfigError(
            f"{where}.object_lock_mode = {table['object_lock_mode']!r}: "
            f"expected one of {', '.join(LOCK_MODES)}"
        )
    kw["object_lock_mode"] = mode
    for key in ("connect_timeout", "read_timeout"):
        if key in table:
            kw[key] = float(table[key])
    if table.get("ca_file"):
        kw["ca_file"] = str(table["ca_file"])
    if "path_style" in table:
        kw["path_style"] = bool(table["path_style"])
    access = read_secret(table, "access_key", where)
    secret = read_secret(table, "secret_key", where)
    if (access is None) != (secret is None):
        raise S3ConfigError(f"{where}: set both access_key_* and secret_key_*, or neither")
    return S3Options(bucket, prefix, access_key=access, secret_key=secret, **kw)
