"""Object-lock operations of the S3 backend (a mixin of S3Backend, split out to keep each
module small): extending retention in generations (retention.py), reading an object's
retention, and telling a refused delete of a locked version from a permission problem."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from repository.s3.errors import ObjectLockedError, S3BackendError, error_code
from repository.s3.options import S3Options
from repository.s3.retention import RetentionMemo, RetentionPolicy


class ObjectLockOps:
    # Provided by S3Backend.
    opts: S3Options
    client: Any
    retention: RetentionPolicy | None
    versioned: bool
    _lock: threading.Lock
    _retained: RetentionMemo

    def _call(self, key: str, op: str, **kw: Any) -> Any: ...
    def _full(self, key: str) -> str: ...
    def _writable(self, key: str) -> None: ...
    def _version_of(self, key: str) -> dict[str, str]: ...

    def ensure_retained(self, keys: Iterable[str], until: datetime) -> int:
        """Make every key retained at least until `until`; returns the S3 calls made.
        Keys this process already retained long enough cost nothing; the rest are extended
        to the next generation boundary (retention.py), so they need no call for the next
        `object_lock_generation_days` days. No-op without object lock."""
        if self.retention is None:
            return 0
        with self._lock:
            todo = []
            for k in dict.fromkeys(keys):
                known = self._retained.get(k)
                if known is None or known < until:
                    todo.append(k)
        if not todo:
            return 0
        self._writable(todo[0])
        target = max(self.retention.write_until(datetime.now(UTC)), self.retention.ceil(until))
        mode = self.retention.mode

        def extend(key: str) -> None:
            self._call(
                key,
                "put_object_retention",
                Key=self._full(key),
                Retention={"Mode": mode, "RetainUntilDate": target},
            )
            with self._lock:
                self._retained.set(key, target)

        with ThreadPoolExecutor(self.opts.max_connections, thread_name_prefix="s3-ret") as pool:
            list(pool.map(extend, todo))
        return len(todo)

    def retain_point(
        self,
        base_keys: Iterable[str],
        changed_keys: Iterable[str],
        base_time: datetime | None,
        now: datetime | None = None,
    ) -> int:
        """What a point writer calls before its commit; returns the S3 calls made.
        `base_keys`: objects the new point takes over unchanged from its base point (made
        at `base_time`, None for no base or a base made without object lock) — skipped
        while the base's generation floor covers the new point. `changed_keys`: objects
        the changed slots reference — always checked, as one that deduplicated against an
        older object has an unknown retention (the ones this process wrote cost nothing)."""
        if self.retention is None:
            return 0
        now = now or datetime.now(UTC)
        need = self.retention.required(now)
        calls = self.ensure_retained(changed_keys, need)
        if base_time is None or not self.retention.base_covers(base_time, now):
            calls += self.ensure_retained(base_keys, need)
        return calls

    def retention_of(self, key: str) -> tuple[str, datetime] | None:
        """(mode, retain-until) of the current version, None when it has no retention."""
        if self.retention is None and not self.versioned:
            return None  # object lock needs versioning: nothing here can be locked
        extra = self._version_of(key)
        try:
            ret = self._call(key, "get_object_retention", Key=self._full(key), **extra)
        except S3BackendError as exc:
            code = error_code(exc.cause) if isinstance(exc.cause, ClientError) else ""
            if "ObjectLock" in code or code == "InvalidRequest":
                return None  # no retention on this object, or no object lock on the bucket
            raise
        ret = ret["Retention"]
        return ret["Mode"], ret["RetainUntilDate"]

    def _raise_if_locked(self, key: str, full: str, version_id: str) -> None:
        try:
            ret = self.client.get_object_retention(
                Bucket=self.opts.bucket, Key=full, VersionId=version_id
            )["Retention"]
        except (ClientError, BotoCoreError):
            return  # no retention readable: the refusal was a plain permission problem
        until = ret.get("RetainUntilDate")
        if until is not None and until > datetime.now(UTC):
            raise ObjectLockedError(key, until, ret.get("Mode")) from None
