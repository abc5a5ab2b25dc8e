"""[repository] and [copies.NAME] of vigil.toml: where a repository lives (a directory,
or an object store at s3://BUCKET/PREFIX with its [.s3] table) and its passphrase. Split
from config.py, which keeps the other sections; the same checks serve both tables."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# key -> (type, required); `path` or `url` is required, checked by repository_table_problems.
REPOSITORY_KEYS: dict[str, tuple[Any, bool]] = {
    "path": (str, False),
    "url": (str, False),
    "s3": (dict, False),
    "passphrase_env": (str, False),
    "passphrase_file": (str, False),
    "key_file": (str, False),
    "chunk_size": (int, False),
    "orphan_keep_days": (int, False),
}
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "a table"}
_S3_FILE_KEYS = ("access_key_file", "secret_key_file", "ca_file")
_COPY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


@dataclass(frozen=True)
class RepositoryConfig:
    """[repository] (or one [copies.NAME], `where` naming it): a directory (`path`) or an
    object store (`url` = "s3://BUCKET/PREFIX" with its [.s3] table)."""

    path: str = ""
    url: str = ""
    s3: dict[str, Any] = field(default_factory=dict, hash=False)
    passphrase_env: str = ""
    passphrase_file: str = ""
    # A host key (protector/hostkey.py): opens the repository on this host without the
    # passphrase's key derivation; the passphrase stays the way in for other hosts.
    key_file: str = ""
    # repository.config.DEFAULT_CHUNK_SIZE, written out: importing any repository module
    # loads the whole package, which `vigil --help` must not (tests/protector/
    # test_cli_startup.py checks both the import and that the two values agree).
    chunk_size: int = 1 << 20
    orphan_keep_days: int = 30
    config_path: str = field(default="repository", compare=False)
    where: str = field(default="repository", compare=False)

    @property
    def location(self) -> str:
        """What names the repository to a person: its url or its directory."""
        return self.url or self.path

    @property
    def name(self) -> str:
        """A copy's NAME ([copies.NAME]); "" for [repository]."""
        return self.where.removeprefix("copies.") if self.where != "repository" else ""

    @property
    def key(self) -> str:
        """The config key holding the location, for messages."""
        return f"{self.where}.url" if self.url else f"{self.where}.path"

    @property
    def object_lock_days(self) -> int:
        return int(self.s3.get("object_lock_days", 0)) if self.url else 0

    def s3_options(self) -> Any:
        """repository.s3.S3Options, the credentials read now (environment or file)."""
        from protector.config import ConfigError
        from repository.s3.options import S3ConfigError, options_from_config

        try:
            return options_from_config(self.url, self.s3, f"{self.where}.s3")
        except S3ConfigError as exc:
            raise ConfigError(self.config_path, [str(exc)]) from None

    def host_key(self) -> bytes | None:
        """The host key from key_file; None when none is configured or the file is not
        there yet (the passphrase opens the repository then)."""
        if not self.key_file:
            return None
        from protector.hostkey import read_host_key

        return read_host_key(self.key_file, f"{self.where}.key_file", self.config_path)

    def passphrase(self) -> str | None:
        from protector.config import ConfigError, read_secret_file

        if self.passphrase_env:
            value = os.environ.get(self.passphrase_env)
            if value is None:
                raise ConfigError(
                    self.config_path,
                    [
                        f"{self.where}.passphrase_env: environment variable "
                        f"{self.passphrase_env} is not set; export {self.passphrase_env}=… "
                        f"(or set {self.where}.passphrase_file)"
                    ],
                )
            return value
        if self.passphrase_file:
            return read_secret_file(
                self.passphrase_file, f"{self.where}.passphrase_file", self.config_path
            )
        return None


def repository_table_problems(r: dict[str, Any], where: str, base: Path) -> list[str]:
    """Check (and complete: relative files made absolute) one repository table, typed
    already: `path` or `url`, never both; an s3:// url and its [WHERE.s3] table checked
    as far as can be without reading the credentials (those are read when it is opened)."""
    problems: list[str] = []
    if "path" in r and "url" in r:
        problems.append(f"{where}: set path (a directory) or url (s3://BUCKET/PREFIX), not both")
    elif "path" not in r and "url" not in r:
        problems.append(
            f'{where}.path: required key is missing (or {where}.url = "s3://BUCKET/PREFIX" '
            "for object storage)"
        )
    if "path" in r:
        r["path"] = str(base / r["path"])
    for key in ("passphrase_file", "key_file"):
        if r.get(key):
            r[key] = str(base / r[key])
    if "chunk_size" in r:
        # Imported only here: the repository package costs ~50 ms, which a command that
        # never opens the repository (`vigil status`, a backup handed to the daemon) skips.
        from repository.config import chunk_size_problem

        if problem := chunk_size_problem(r["chunk_size"]):
            problems.append(f"{where}.chunk_size: {problem}")
    s3 = r.get("s3")
    if s3 is not None and "url" not in r:
        problems.append(f'{where}.s3: applies only with {where}.url = "s3://BUCKET/PREFIX"')
    if "url" in r:
        problems += _s3_problems(r, where, base)
    return problems


def _s3_problems(r: dict[str, Any], where: str, base: Path) -> list[str]:
    from repository.s3.options import S3ConfigError, options_from_config

    problems: list[str] = []
    url = r["url"]
    table = dict(r.get("s3") or {})
    for key in _S3_FILE_KEYS:
        if isinstance(table.get(key), str) and table[key]:
            table[key] = str(base / Path(table[key]).expanduser())
    r["s3"] = table
    if not url.startswith("s3://"):
        return [
            f"{where}.url: expected s3://BUCKET/PREFIX, got {url!r} (a directory goes in "
            f"{where}.path)"
        ]
    # Everything but the credentials, which are read (and checked) at open.
    secretless = {k: v for k, v in table.items() if not k.endswith(("_env", "_file"))}
    try:
        options_from_config(url, secretless, f"{where}.s3")
    except S3ConfigError as exc:
        problems.append(str(exc))
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}.s3: {exc}")
    for name in ("access_key", "secret_key"):
        if f"{name}_env" in table and f"{name}_file" in table:
            problems.append(f"{where}.s3: set {name}_env or {name}_file, not both")
    has = {n: f"{n}_env" in table or f"{n}_file" in table for n in ("access_key", "secret_key")}
    if has["access_key"] != has["secret_key"]:
        problems.append(
            f"{where}.s3: set both access_key_env/_file and secret_key_env/_file, "
            "or neither (then botocore's usual sources: environment, ~/.aws)"
        )
    return problems


def parse_copies(
    doc: Any, base: Path, path: str, problems: list[str]
) -> dict[str, RepositoryConfig]:
    """[copies.NAME] tables: the keys of [repository] (a path or an s3:// url, its own
    passphrase), each checked the same way."""
    from protector.config import _did_you_mean as did_you_mean

    if not isinstance(doc, dict):
        problems.append("copies: must be a table of [copies.NAME] tables")
        return {}
    out: dict[str, RepositoryConfig] = {}
    for name, table in doc.items():
        where = f"copies.{name}"
        if not _COPY_NAME.fullmatch(name):
            problems.append(f"{where}: a copy's name is letters, digits, - and _ (up to 63)")
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table ([copies.{name}] with path or url)")
            continue
        r: dict[str, Any] = {}
        for key, val in table.items():
            if key not in REPOSITORY_KEYS:
                problems.append(
                    f"{where}.{key}: unknown key (known: {', '.join(sorted(REPOSITORY_KEYS))})"
                    + did_you_mean(key, list(REPOSITORY_KEYS))
                )
                continue
            typ = REPOSITORY_KEYS[key][0]
            if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
                problems.append(f"{where}.{key}: must be {_TYPE_NAMES[typ]}, got {val!r}")
                continue
            r[key] = val
        before = len(problems)
        problems += repository_table_problems(r, where, base)
        if len(problems) == before:
            out[name] = RepositoryConfig(**r, config_path=path, where=where)
    return out
