"""Repositories on S3 and S3-compatible object stores (docs/object-storage.md).

    backend = open_s3_backend(options_from_config("s3://bucket/prefix", table))
    backend.retain_point(base_keys, changed_keys, base_time)  # object lock: extend reused
    open_s3_backend(opts, as_of_time=T)    # read-only view of the bucket at T (recovery)

The client (botocore) is imported on first use of the backend, not by `import repository`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from repository.s3.errors import (
    ConditionalWriteUnsupportedError,
    ObjectLockedError,
    ReadOnlyError,
    S3BackendError,
    S3UnavailableError,
)
from repository.s3.options import S3ConfigError, S3Options, options_from_config
from repository.s3.retention import RetentionPolicy

if TYPE_CHECKING:
    from repository.s3.backend import S3Backend
    from repository.s3.probe import probe_conditional_writes


def open_s3_backend(
    opts: S3Options, *, as_of_time: datetime | None = None, probe: bool = True
) -> S3Backend:
    """Check the bucket (exists; object lock enabled when asked for) and, unless read-only,
    that the service honours If-None-Match; ConditionalWriteUnsupportedError if not."""
    from repository.s3.backend import S3Backend
    from repository.s3.probe import probe_conditional_writes

    backend = S3Backend(opts, as_of_time=as_of_time)
    backend.check_bucket()
    if probe and as_of_time is None:
        probe_conditional_writes(backend)
    return backend


def __getattr__(name: str) -> Any:
    if name == "S3Backend":
        from repository.s3.backend import S3Backend

        return S3Backend
    if name == "probe_conditional_writes":
        from repository.s3.probe import probe_conditional_writes

        return probe_conditional_writes
    raise AttributeError(name)


__all__ = [
    "ConditionalWriteUnsupportedError",
    "ObjectLockedError",
    "ReadOnlyError",
    "RetentionPolicy",
    "S3Backend",
    "S3BackendError",
    "S3ConfigError",
    "S3Options",
    "S3UnavailableError",
    "open_s3_backend",
    "options_from_config",
    "probe_conditional_writes",
]
