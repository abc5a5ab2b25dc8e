"""structlog, configured once: readable on a terminal, JSON lines otherwise.

A redaction processor blanks any value whose key looks like a secret, so a
careless `log.info(..., password=...)` still leaks nothing.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEY = re.compile(
    r"pass(word|phrase)?|secret|token|cookie|credential|session_?id|api_?key", re.I
)
REDACTED = "<redacted>"
_configured = False


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and SECRET_KEY.search(key):
            event[key] = REDACTED
    return event


def configure(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure logging for the process (idempotent; the last call wins)."""
    global _configured
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    lvl = logging.getLevelNamesMapping().get(level.upper())
    if lvl is None:
        raise ValueError(f"--log-level: unknown level {level!r} (debug, info, warning, error)")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _configured = True
