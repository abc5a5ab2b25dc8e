"""S3Backend: the repository's write-once object protocol on S3 and look-alikes.

botocore's synchronous client is thread-safe and the repository calls its backend from a
thread pool, so one client with a connection pool as wide as the I/O limiter serves every
thread; botocore's "standard" retry mode backs off exponentially (with jitter) on 5xx,
throttling and dropped connections. Why botocore and not obstore: docs/object-storage.md.

Write-once is `PUT` with `If-None-Match: *` (412 = the key exists), checked at every open
by probe.py. With object lock, each PUT carries `x-amz-object-lock-mode` and
`x-amz-object-lock-retain-until-date` (retention.py picks the date) and ensure_retained()
extends reused objects with PutObjectRetention. On a versioned bucket delete() removes
every version (so prune frees space); a locked version raises ObjectLockedError.
`as_of=TIME` opens the bucket read-only as it was at TIME, through ListObjectVersions and
GET ?versionId — the recovery path after an attacker stacked delete markers.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import botocore.session
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from repository.backend import ObjectInfo
from repository.errors import ObjectNotFoundError
from repository.s3.errors import (
    ObjectLockedError,
    ReadOnlyError,
    S3BackendError,
    S3UnavailableError,
)
from repository.s3.options import S3ConfigError, S3Options
from repository.s3.retention import RetentionMemo, RetentionPolicy
from repository.s3.versions import VersionEntry, as_of

log = structlog.get_logger(__name__)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412"}
_DENIED = {"AccessDenied", "403"}


def make_client(opts: S3Options) -> Any:
    session = botocore.session.get_session()
    config = Config(
        region_name=opts.region,
        signature_version="s3v4",
        s3={"addressing_style": "path" if opts.path_style else "auto"},
        retries={"mode": "standard", "total_max_attempts": opts.max_attempts},
        max_pool_connections=opts.max_connections,
        connect_timeout=opts.connect_timeout,
        read_timeout=opts.read_timeout,
        tcp_keepalive=True,
    )
    return session.create_client(
        "s3",
        endpoint_url=opts.endpoint,
        aws_access_key_id=opts.access_key,
        aws_secret_access_key=opts.secret_key,
        verify=opts.ca_file or True,
        config=config,
    )


def _code(exc: ClientError) -> str:
    err = exc.response.get("Error", {})
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


class S3Backend:
    """One repository under `s3://bucket/prefix`. Thread-safe."""

    def __init__(self, opts: S3Options, *, as_of_time: datetime | None = None) -> None:
        self.opts = opts
        self.client = make_client(opts)
        self.retention = (
            RetentionPolicy(
                opts.object_lock_days, opts.object_lock_mode, opts.object_lock_generation_days
            )
            if opts.locking
            else None
        )
        self.as_of_time = as_of_time
        self.versioned = False  # set by check_bucket()
        self.calls: Counter[str] = Counter()  # S3 operations by name, retries included
        self._lock = threading.Lock()  # never held across a request
        self._past_lock = threading.Lock()  # held while the as_of view loads
        self._retained = RetentionMemo()  # retain-until dates we set ourselves
        self._past: dict[str, VersionEntry] | None = None  # the as_of view, loaded once
        self.client.meta.events.register("before-send.s3", self._count)

    def __repr__(self) -> str:
        return f"S3Backend({self.opts.url!r}, endpoint={self.opts.endpoint!r})"

    def _count(self, event_name: str = "", **_kw: Any) -> None:
        # "before-send.s3.PutObject": fired once per HTTP request, retries included.
        with self._lock:
            self.calls[event_name.rsplit(".", 1)[-1]] += 1

    # -- plumbing -----------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad object key {key!r}")
        return self.opts.prefix + key

    def _call(self, key: str, op: str, **kw: Any) -> Any:
        """One S3 operation; failures become typed repository errors naming the object."""
        try:
            return getattr(self.client, op)(Bucket=self.opts.bucket, **kw)
        except ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND:
                raise ObjectNotFoundError(key) from None
            if code == "NoSuchBucket":
                raise S3BackendError(
                    key, exc, f"bucket {self.opts.bucket!r} does not exist at the endpoint"
                ) from None
            if code in _DENIED or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                hint = "check the access key, secret key and the bucket policy"
                raise S3BackendError(key, exc, hint) from None
            raise S3BackendError(key, exc) from None
        except BotoCoreError as exc:
            raise S3UnavailableError(
                key,
                exc,
                f"the S3 service {self.opts.endpoint or 'AWS'} did not answer after "
                f"{self.opts.max_attempts} attempts: earlier restore points are intact; "
                "run the backup again once the service is back",
            ) from None

    def _lock_args(self, key: str) -> dict[str, Any]:
        if self.retention is None or key.startswith(self.opts.unlocked_prefixes):
            return {}
        until = self.retention.write_until(datetime.now(UTC))
        with self._lock:
            self._retained.set(key, until)
        return {"ObjectLockMode": self.retention.mode, "ObjectLockRetainUntilDate": until}

    def _writable(self, key: str) -> None:
        if self.as_of_time is not None:
            raise ReadOnlyError(
                f"{self.opts.url} is open read-only as of {self.as_of_time.isoformat()}; "
                f"refusing to write {key}"
            )

    # -- opening ------------------------------------------------------------------------------

    def check_bucket(self) -> None:
        """The bucket exists and, when object lock is asked for, has it enabled."""
        try:
            self.client.head_bucket(Bucket=self.opts.bucket)
        except ClientError as exc:
            if _code(exc) in _DENIED:
                raise S3ConfigError(
                    f"repository.url {self.opts.url}: access to bucket {self.opts.bucket!r} "
                    "denied (403): check the access key, secret key and the bucket policy"
                ) from None
            raise S3ConfigError(
                f"repository.url {self.opts.url}: bucket {self.opts.bucket!r} is not usable "
                f"({_code(exc)}); create it first (with object lock if object_lock_days > 0)"
            ) from None
        except BotoCoreError as exc:
            raise S3UnavailableError("(bucket)", exc, "check repository.s3.endpoint") from None
        status = self._call("(bucket)", "get_bucket_versioning").get("Status")
        self.versioned = status in ("Enabled", "Suspended")
        if self.retention is None:
            return
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.opts.bucket)
            enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        except ClientError:
            enabled = None
        if enabled != "Enabled":
            raise S3ConfigError(
                f"repository.s3.object_lock_days = {self.opts.object_lock_days} but bucket "
                f"{self.opts.bucket!r} has no object lock; object lock can only be enabled "
                "when a bucket is created: create a new bucket with object lock, or set "
                "object_lock_days = 0"
            )

    # -- the Backend protocol -----------------------------------------------------------------

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._writable(key)
        full = self._full(key)
        try:
            self._call(
                key,
                "put_object",
                Key=full,
                Body=bytes(data),
                IfNoneMatch="*",
                **self._lock_args(key),
            )
        except S3BackendError as exc:
            cause = exc.cause
            if isinstance(cause, ClientError) and _code(cause) in _PRECONDITION:
                with self._lock:
                    self._retained.forget(key)  # not ours: its retention is unknown
                return False
            if isinstance(cause, ClientError) and _code(cause) == "ConditionalRequestConflict":
                # AWS: a concurrent conditional write on the key is in flight; it wins.
                return False
            raise
        return True

    def replace(self, key: str, data: bytes) -> None:
        self._writable(key)
        self._call(key, "put_object", Key=self._full(key), Body=bytes(data), **self._lock_args(key))

    def get(self, key: str) -> bytes:
        extra = self._version_of(key)
        resp = self._call(key, "get_object", Key=self._full(key), **extra)
        return self._read_body(key, resp)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer at the object's end)."""
        if start < 0 or length <= 0:
            raise ValueError(f"bad range {start}+{length} of {key}")
        extra = self._version_of(key)
        rng = f"bytes={start}-{start + length - 1}"
        resp = self._call(key, "get_object", Key=self._full(key), Range=rng, **extra)
        return self._read_body(key, resp)

    def _read_body(self, key: str, resp: dict[str, Any]) -> bytes:
        try:
            return resp["Body"].read()
        except BotoCoreError as exc:  # cut off mid-body: IncompleteReadError and friends
            raise S3UnavailableError(key, exc, "the download was cut off; try again") from None

    def exists(self, key: str) -> bool:
        if self.as_of_time is not None:
            return key in self._past_view()
        try:
            self._call(key, "head_object", Key=self._full(key))
        except ObjectNotFoundError:
            return False
        return True

    def touch(self, key: str) -> bool:
        # S3 cannot reset LastModified without rewriting the object (a new version, and
        # a second locked copy), so a reused object keeps its upload time. Prune's grace
        # still protects fresh uploads; writers on other hosts are kept apart from a sweep
        # by the repository's lock objects, not by mtimes.
        return self.exists(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if self.as_of_time is not None:
            for key, e in sorted(self._past_view().items()):
                if key.startswith(prefix):
                    yield ObjectInfo(key, e.size, e.modified.timestamp())
            return
        cut = len(self.opts.prefix)
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": self.opts.prefix + prefix, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(prefix or "(all)", "list_objects_v2", **kw)
            for o in page.get("Contents", ()):
                yield ObjectInfo(o["Key"][cut:], int(o["Size"]), o["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self._writable(key)
        full = self._full(key)
        if not self.versioned:
            self._call(key, "delete_object", Key=full)
            return
        # A plain DELETE would only stack a delete marker: remove every version instead.
        for e in self._versions(full):
            try:
                self._call(key, "delete_object", Key=full, VersionId=e.version_id)
            except S3BackendError as exc:
                if isinstance(exc.cause, ClientError) and _code(exc.cause) in _DENIED:
                    self._raise_if_locked(key, full, e.version_id)
                raise
        with self._lock:
            self._retained.forget(key)

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

    def cleanup(self, older_than: float) -> int:
        """Abort multipart uploads begun before `older_than` (vigil itself uploads each
        object in one PUT, so these come only from other tools sharing the bucket)."""
        if self.as_of_time is not None:
            return 0
        page = self._call("(uploads)", "list_multipart_uploads", Prefix=self.opts.prefix)
        aborted = 0
        for up in page.get("Uploads", ()):
            if up["Initiated"].timestamp() < older_than:
                self._call(
                    up["Key"], "abort_multipart_upload", Key=up["Key"], UploadId=up["UploadId"]
                )
                aborted += 1
        return aborted

    # -- object lock --------------------------------------------------------------------------

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
            code = _code(exc.cause) if isinstance(exc.cause, ClientError) else ""
            if "ObjectLock" in code or code == "InvalidRequest":
                return None  # no retention on this object, or no object lock on the bucket
            raise
        ret = ret["Retention"]
        return ret["Mode"], ret["RetainUntilDate"]

    # -- versions -----------------------------------------------------------------------------

    def _versions(self, prefix: str, exact: bool = True) -> Iterator[VersionEntry]:
        cut = len(self.opts.prefix)
        kw: dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
        while True:
            page = self._call(prefix[cut:] or "(all)", "list_object_versions", **kw)
            for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                for v in page.get(kind, ()):
                    if exact and v["Key"] != prefix:
                        continue
                    yield VersionEntry(
                        v["Key"][cut:],
                        v["VersionId"],
                        v["LastModified"],
                        int(v.get("Size", 0)),
                        marker,
                    )
            if not page.get("IsTruncated"):
                return
            kw["KeyMarker"] = page.get("NextKeyMarker")
            kw["VersionIdMarker"] = page.get("NextVersionIdMarker")

    def _past_view(self) -> dict[str, VersionEntry]:
        """Every key of the repository as it was at `as_of_time` (one paginated sweep)."""
        assert self.as_of_time is not None
        with self._past_lock:
            if self._past is None:
                entries = self._versions(self.opts.prefix, exact=False)
                self._past = as_of(entries, self.as_of_time)
            return self._past

    def _version_of(self, key: str) -> dict[str, str]:
        if self.as_of_time is None:
            return {}
        e = self._past_view().get(key)
        if e is None:
            raise ObjectNotFoundError(key)
        return {"VersionId": e.version_id}
