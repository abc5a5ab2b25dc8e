"""S3Backend: the repository's write-once object protocol on S3 and look-alikes.

botocore's synchronous client is thread-safe and the repository calls its backend from a
thread pool, so one client with a connection pool as wide as the I/O limiter serves every
thread; botocore's "standard" retry mode backs off exponentially (with jitter) on 5xx,
throttling and dropped connections. Why botocore and not obstore: docs/object-storage.md.

Write-once is `PUT` with `If-None-Match: *` (412 = the key exists), checked at every open
by probe.py. With object lock, each PUT carries `x-amz-object-lock-mode` and
`x-amz-object-lock-retain-until-date` (retention.py picks the date) and ensure_retained()
extends reused objects with PutObjectRetention (lock.py). On a versioned bucket delete() removes
every version (so prune frees space); a locked version raises ObjectLockedError.
`as_of=TIME` opens the bucket read-only as it was at TIME, through ListObjectVersions and
GET ?versionId — the recovery path after an attacker stacked delete markers.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import botocore.session
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from repository.backend import ObjectInfo
from repository.errors import ObjectNotFoundError
from repository.s3.errors import (
    BACKUP_ADVICE,
    DENIED,
    ReadOnlyError,
    S3BackendError,
    S3UnavailableError,
    error_code,
)
from repository.s3.lock import ObjectLockOps
from repository.s3.options import S3ConfigError, S3Options
from repository.s3.retention import RetentionMemo, RetentionPolicy
from repository.s3.versions import VersionEntry, as_of

log = structlog.get_logger(__name__)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412"}


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


class S3Backend(ObjectLockOps):
    """One repository under `s3://bucket/prefix`. Thread-safe."""

    # put_if_absent is one conditional PUT (412 when the key exists; the probe checks the
    # service honours it) and touch() refreshes nothing: a write needs no check before it
    # (repository/objects.py, put_chunk).
    conditional_put = True

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
            code = error_code(exc)
            if code in _NOT_FOUND:
                raise ObjectNotFoundError(key) from None
            if code == "NoSuchBucket":
                raise S3BackendError(
                    key, exc, f"bucket {self.opts.bucket!r} does not exist at the endpoint"
                ) from None
            if code in DENIED or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                hint = "check the access key, secret key and the bucket policy"
                raise S3BackendError(key, exc, hint) from None
            raise S3BackendError(key, exc) from None
        except BotoCoreError as exc:
            raise S3UnavailableError(
                key,
                exc,
                f"the S3 service {self.opts.endpoint or 'AWS'} did not answer after "
                f"{self.opts.max_attempts} attempts: {BACKUP_ADVICE}",
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
            if error_code(exc) in DENIED:
                raise S3ConfigError(
                    f"repository.url {self.opts.url}: access to bucket {self.opts.bucket!r} "
                    "denied (403): check the access key, secret key and the bucket policy"
                ) from None
            raise S3ConfigError(
                f"repository.url {self.opts.url}: bucket {self.opts.bucket!r} is not usable "
                f"({error_code(exc)}); create it first (with object lock if object_lock_days > 0)"
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
            if isinstance(cause, ClientError) and error_code(cause) in _PRECONDITION:
                with self._lock:
                    self._retained.forget(key)  # not ours: its retention is unknown
                return False
            if isinstance(cause, ClientError) and error_code(cause) == "ConditionalRequestConflict":
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
                if isinstance(exc.cause, ClientError) and error_code(exc.cause) in DENIED:
                    self._raise_if_locked(key, full, e.version_id)
                raise
        with self._lock:
            self._retained.forget(key)

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
