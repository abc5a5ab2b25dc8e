"""The write-once probe: refuse a service that ignores `If-None-Match: *`.

Some S3 look-alikes accept the header and overwrite anyway. vigil's repository relies on
write-once (config arbitration between concurrent inits, manifests, lock objects), so at
`vigil init` and at every open one fresh probe key is written twice conditionally: the
second PUT must fail with 412 Precondition Failed and the first content must survive.
"""

from __future__ import annotations

import contextlib
import secrets

import structlog

from repository.errors import RepositoryError
from repository.s3.backend import S3Backend
from repository.s3.errors import ConditionalWriteUnsupportedError

log = structlog.get_logger(__name__)

PROBE_PREFIX = "locks/write-once-probe-"  # under an unlocked prefix: deletable at once


def probe_conditional_writes(backend: S3Backend) -> None:
    key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    where = f"{backend.opts.endpoint or 'AWS S3'} (bucket {backend.opts.bucket!r})"
    try:
        if not backend.put_if_absent(key, b"first"):
            raise ConditionalWriteUnsupportedError(
                f"S3 service {where}: a conditional PUT of the new key {key} was refused "
                "as if it existed; the service does not implement If-None-Match correctly"
            )
        second = backend.put_if_absent(key, b"second")
        kept = backend.get(key)
        if second or kept != b"first":
            raise ConditionalWriteUnsupportedError(
                f"S3 service {where} ignores If-None-Match: * (a second conditional PUT of "
                f"{key} succeeded instead of failing with 412 Precondition Failed): concurrent "
                "writers could overwrite each other's objects, so vigil refuses this service. "
                "Use a service (or version) that supports conditional writes"
            )
    finally:
        with contextlib.suppress(RepositoryError):
            backend.delete(key)
    log.debug("s3.write_once_probe_passed", endpoint=backend.opts.endpoint)
