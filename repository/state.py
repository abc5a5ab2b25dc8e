"""Local state: what one machine keeps about a repository, outside the repository.

It replaces the SQL catalog (see docs/repository-format.md, "Local state"): nothing read
the catalog's tables but the newest seq per VM, so that is what is kept, in small files:

    <state dir>/<repository id>/
        heads/<vm key>.json   {"seq", "point_id", "hash"}: the newest point this machine
                              saw committed for the VM. It never goes down, so removing
                              manifests from the repository (a rollback) is detected by
                              verify, and a writer never reuses a seq (docs: sequence rule).
        locks/                per-VM flock files (commit serialisation, protector's VM lock)
        jobs.jsonl            one JSON line per job state change (an audit trail)

The state directory (`[state] dir`, default /var/lib/vigil/state, env VIGIL_STATE_DIR) is
created 0700; files are 0600 and opened without following symlinks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from repository.backend import owner_to_match
from repository.errors import RepositoryError
from repository.locks import locked
from repository.manifest import Manifest

if TYPE_CHECKING:
    from repository.repo import Repository

log = structlog.get_logger(__name__)

DEFAULT_STATE_DIR = "/var/lib/vigil/state"
STATE_ENV = "VIGIL_STATE_DIR"
JOURNAL_MAX = 8 << 20  # bytes; then jobs.jsonl moves to jobs.jsonl.1 (one generation kept)
_VM_KEY = re.compile(r"[0-9a-f]{16}")


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR)


def _write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` (a regular file we own) with `data`, mode 0600."""
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        if owner := owner_to_match(path):
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class LocalState:
    def __init__(self, base: Path, repo_id: str) -> None:
        self.base = base
        self.dir = base / repo_id
        self._mutex = threading.Lock()

    def ensure(self) -> Path:
        """Create the state directories (0700) if needed; returns this repository's."""
        try:
            for d in (self.base, self.dir, self.dir / "heads", self.dir / "locks"):
                if d.is_symlink():
                    raise RepositoryError(
                        f"state directory {d} is a symbolic link; vigil refuses to follow it "
                        "(remove the link, or set [state] dir to a real directory)"
                    )
                if not d.is_dir():
                    owner = owner_to_match(d)  # root in the service user's directory
                    d.mkdir(mode=0o700, parents=True, exist_ok=True)
                    if owner:
                        os.chown(d, *owner)
            os.chmod(self.base, 0o700)
        except OSError as exc:
            raise RepositoryError(
                f"state directory {self.dir} cannot be created: {exc.strerror or exc}; set "
                f"[state] dir in the configuration (or {STATE_ENV}) to a directory this user "
                "can write"
            ) from exc
        return self.dir

    def host_id(self) -> str:
        """This machine's id for repository lock objects (state dir/host-id)."""
        from repository.repolock import host_id

        self.ensure()
        return host_id(self.base)

    @property
    def lock_dir(self) -> Path:
        return self.dir / "locks"

    # -- heads --------------------------------------------------------------------------

    def head(self, vm_key: str) -> tuple[int, str | None, str | None]:
        """(seq, point id, hash) of the newest point this machine saw; (0, None, None)."""
        path = self.dir / "heads" / f"{vm_key}.json"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return (0, None, None)
        except OSError as exc:
            raise RepositoryError(f"state file {path} unreadable: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            try:
                d = json.loads(f.read())
                return (int(d["seq"]), d.get("point_id"), d.get("hash"))
            except (ValueError, KeyError, TypeError) as exc:
                raise RepositoryError(
                    f"state file {path} is damaged ({exc}); run `vigil catalog rebuild`"
                ) from exc

    def raise_head(self, vm_key: str, seq: int, point_id: str, hash_: str | None) -> None:
        """Record a committed point unless a newer one is recorded already."""
        if not _VM_KEY.fullmatch(vm_key):
            raise ValueError(f"bad vm key {vm_key!r}")
        self.ensure()
        with self._mutex, locked(self.lock_dir / "heads.lock", exclusive=True):
            if self.head(vm_key)[0] >= seq:
                return
            body = {"seq": seq, "point_id": point_id, "hash": hash_}
            _write_private(self.dir / "heads" / f"{vm_key}.json", json.dumps(body).encode())

    def heads(self) -> dict[str, int]:
        """vm key -> newest seq ever committed (as seen here): verify's rollback check."""
        try:
            names = os.listdir(self.dir / "heads")
        except FileNotFoundError:
            return {}
        keys = [n.removesuffix(".json") for n in names if n.endswith(".json")]
        return {k: self.head(k)[0] for k in sorted(keys) if _VM_KEY.fullmatch(k)}

    # -- the last whole-repository verify, for the status page -----------------------------

    def record_verify(self, ok: bool, read_data: bool, points: int, problems: int) -> None:
        body = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "ok": ok,
            "read_data": read_data,
            "points_checked": points,
            "problems": problems,
        }
        _write_private(self.ensure() / "last_verify.json", json.dumps(body).encode())

    def last_verify(self) -> dict[str, Any] | None:
        """What the last `vigil verify` of the whole repository on this machine found."""
        try:
            fd = os.open(self.dir / "last_verify.json", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            try:
                body = json.loads(f.read(4096))
            except ValueError:
                return None
        return body if isinstance(body, dict) else None

    # -- the catalog's interface, kept for protector --------------------------------------

    async def record_point(self, m: Manifest) -> None:
        await anyio.to_thread.run_sync(self.raise_head, m.vm.key, m.seq, m.point_id, m.hash)

    async def known_heads(self) -> dict[str, int]:
        return await anyio.to_thread.run_sync(self.heads)

    async def record_job(self, job_id: str, kind: str, started_at: datetime, **fields: Any) -> None:
        """Append the job's state to jobs.jsonl (vm_key, finished_at, outcome, message...)."""
        line = {"job_id": job_id, "kind": kind, "started_at": started_at, **fields}
        text = json.dumps(line, default=lambda v: v.isoformat(), sort_keys=True) + "\n"
        await anyio.to_thread.run_sync(self._append_job, text.encode())

    def _append_job(self, data: bytes) -> None:
        path = self.ensure() / "jobs.jsonl"
        with self._mutex:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_size > JOURNAL_MAX:
                    os.replace(path, path.with_name("jobs.jsonl.1"))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                if owner := owner_to_match(path):
                    os.fchown(fd, *owner)
                os.write(fd, data)
            finally:
                os.close(fd)

    async def rebuild(self, repo: Repository) -> tuple[int, int]:
        """Raise each VM's head to what the repository holds (never lowers one: a head
        above the repository's is the evidence of a rollback). Returns (live, pruned)."""

        def run() -> tuple[int, int]:
            manifests, tombs = repo.manifests(), repo.tombstones()
            for vm_key in sorted({m.vm.key for m in manifests} | {t.vm_key for t in tombs}):
                seq, pid = repo.high_water(vm_key)
                if pid is not None:
                    known = {m.point_id: m.hash for m in manifests}
                    known |= {t.point_id: t.manifest_hash for t in tombs}
                    self.raise_head(vm_key, seq, pid, known.get(pid))
            gone = {t.point_id for t in tombs}
            return len([m for m in manifests if m.point_id not in gone]), len(tombs)

        return await anyio.to_thread.run_sync(run)

    async def close(self) -> None:
        return None
