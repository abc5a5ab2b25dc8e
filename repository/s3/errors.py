"""Typed failures of the S3 backend; each names the object (or setting) at fault."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from repository.errors import BackendError, RepositoryError

DENIED = {"AccessDenied", "403"}
# What an unavailable service means for a backup; a copy says its own next step instead.
BACKUP_ADVICE = "earlier restore points are intact; run the backup again once the service is back"


def error_code(exc: Any) -> str:
    """The S3 error code of a botocore ClientError (the HTTP status when there is none)."""
    err = exc.response.get("Error", {})
    return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


class S3BackendError(BackendError):
    """The S3 service failed on one object; `hint` says what the admin can do."""

    def __init__(self, key: str, cause: BaseException | str, hint: str = "") -> None:
        super().__init__(key, cause if isinstance(cause, BaseException) else RuntimeError(cause))
        if hint:
            self.args = (f"{self.args[0]}; {hint}",)
        self.hint = hint


class S3UnavailableError(S3BackendError):
    """The service did not answer (connection refused/reset, timeout) after every retry."""


class ObjectLockedError(S3BackendError):
    """Deleting (or overwriting) an object refused because its retention has not expired.
    Prune reports it and tries again after `until`."""

    def __init__(self, key: str, until: datetime | None, mode: str | None) -> None:
        when = until.isoformat() if until else "an unknown date (legal hold?)"
        super().__init__(
            key,
            f"object is locked ({mode or 'retention'}) until {when}",
            "it cannot be deleted before then, not even with vigil's own credentials; "
            "prune retries it after expiry",
        )
        self.until = until
        self.mode = mode


class ConditionalWriteUnsupportedError(RepositoryError):
    """The service ignored `If-None-Match: *`: two writers could overwrite each other's
    objects, so vigil refuses to use it as a repository."""


class ReadOnlyError(RepositoryError):
    """A write on a backend opened read-only (`as_of`, for recovery)."""
