"""The repository config object, the chunk-size rule, and the checks made when opening one.

The chunk-size rule lives here only: protector's configuration check and Repository.init
both call chunk_size_problem().
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from repository import codec
from repository.errors import ConfigTamperedError, RepositoryError, RepositoryExistsError
from repository.keys import Unwrapped, config_mac

log = structlog.get_logger(__name__)

# 1 MiB: measured against 4 MiB on the shared workload (bench/bench_repository.py), a 1 %
# CBT incremental reads and stores 2.3x less (4.0 % vs 9.4 % of a full) at equal full
# and restore speed; indexes grow to 32 bytes per MiB of disk, which is cheap.
DEFAULT_CHUNK_SIZE = 1 << 20
# A power of two keeps every slot boundary aligned to disk sectors and to CBT's block
# granularity; the upper bound also bounds what one chunk may inflate to when read.
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 64 << 20
REPO_FORMAT = "vigil-repository"
CONFIG_KEY = "config"


def chunk_size_problem(chunk_size: object) -> str | None:
    """Why `chunk_size` is not allowed, or None: the one chunk-size rule of vigil."""
    if (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
        or chunk_size & (chunk_size - 1)
    ):
        return (
            f"chunk size {chunk_size!r}: must be a power of two from {MIN_CHUNK_SIZE} "
            f"(64 KiB) to {MAX_CHUNK_SIZE} (64 MiB)"
        )
    return None


@dataclass(frozen=True, slots=True)
class RepoConfig:
    repo_id: str
    chunk_size: int
    encryption: str  # "aes-256-gcm" or "none"
    id_key: str | None  # only for unencrypted repositories

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {
            "format": REPO_FORMAT,
            "version": codec.FORMAT_VERSION,
            "repo_id": self.repo_id,
            "chunk_size": self.chunk_size,
            "encryption": self.encryption,
        }
        if self.id_key is not None:
            d["id_key"] = self.id_key
        return json.dumps(d, sort_keys=True, indent=1).encode()

    def canonical(self) -> bytes:
        """Whitespace-free form: what the key slots' config MAC covers."""
        d = json.loads(self.to_bytes())
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoConfig:
        try:
            d = json.loads(data)
            if d["format"] != REPO_FORMAT or d["version"] != codec.FORMAT_VERSION:
                raise ValueError(f"format {d['format']} version {d['version']} not supported")
            config = cls(d["repo_id"], d["chunk_size"], d["encryption"], d.get("id_key"))
        except (ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"{where}: bad repository config: {exc}") from exc
        problem = chunk_size_problem(config.chunk_size)
        if problem:
            raise RepositoryError(f"{where}: bad repository config: {problem}")
        return config


def check_initialisable(root: Path) -> None:
    """Only an empty directory, or one where a concurrent init has begun (key slots,
    temp files), may become a repository."""
    if not root.exists():
        return
    allowed = {"keys", "locks", CONFIG_KEY}
    others = sorted(
        p.name for p in root.iterdir() if p.name not in allowed and not p.name.startswith(".tmp-")
    )
    if others:
        raise RepositoryExistsError(
            f"{root} is not empty and not a vigil repository (it holds {', '.join(others[:5])}); "
            "choose an empty or new directory"
        )


def refuse_downgrade(root: Path, passphrase: str | None, slots: list[str]) -> None:
    """An unencrypted config must not silently win over an expected encryption: the config
    is cleartext, so replacing it would make us write plaintext and trust unkeyed MACs."""
    if passphrase is not None:
        raise ConfigTamperedError(
            f"repository {root}: its config says unencrypted but a passphrase is configured; "
            "refusing to write plaintext. If this repository really is unencrypted, remove the "
            f"passphrase from the configuration; otherwise {root / CONFIG_KEY} was replaced "
            "(encryption downgrade): restore the original config"
        )
    if slots:
        raise ConfigTamperedError(
            f"repository {root}: its config says unencrypted but it has {len(slots)} key slot(s) "
            f"({slots[0]}): {root / CONFIG_KEY} was probably replaced (encryption downgrade); "
            "restore the original config"
        )


def check_sealed_config(root: Path, config: RepoConfig, got: Unwrapped, slot: str) -> None:
    """The config read must be the one sealed into the key slot that opened."""
    if got.config_mac is None:
        # Written before configs were authenticated: usable, but edits go unnoticed.
        log.warning(
            "repository.config_unauthenticated",
            path=str(root),
            slot=slot,
            fix="change the passphrase once to seal the config into a new key slot",
        )
        return
    if not hmac.compare_digest(got.config_mac, config_mac(got.master, config.canonical())):
        raise ConfigTamperedError(
            f"{root / CONFIG_KEY} does not match the config sealed in key slot {slot}: it was "
            "edited or replaced (chunk size, repository id and encryption must never change); "
            "restore the original config"
        )
