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
    r"pass(word|phrase|wd)?|secret|token|cookie|credential|session_?id|api_?key"
    r"|authori[sz]ation|^auth$|bearer|master_?key|private_?key",
    re.I,
)
# Secrets that travel inside strings (an exception message quoting a header, a URL with a
# password): the part before the secret is kept so the line still says what happened.
SECRET_IN_TEXT = [
    re.compile(r"(vmware_soap_session\s*=\s*)(\"[^\"]*\"|[^;,\s'\"]+)", re.I),
    re.compile(r"(vmware-api-session-id['\"]?\s*[:=]\s*['\"]?)([^'\",;\s}]+)", re.I),
    re.compile(r"(\b(?:Bearer|Basic)\s+)([A-Za-z0-9._~+/=-]+)"),
    re.compile(r"(\b(?:pass(?:word|phrase|wd)?|pwd)['\"]?\s*[:=]\s*['\"]?)([^'\"\s,;&}]+)", re.I),
    re.compile(r"(://[^/\s:@]+:)([^@/\s]+)(?=@)"),  # user:password@host
]
REDACTED = "<redacted>"
_configured = False


def redact_text(text: str) -> str:
    for pattern in SECRET_IN_TEXT:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def redact_value(value: Any) -> Any:
    """`value` with secret-named keys (at any depth) and secret-shaped text blanked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and SECRET_KEY.search(k) else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank secret-named keys at any depth and secret-shaped text in every string
    (the event, values, a formatted traceback). Runs after tracebacks are formatted."""
    for key in list(event):
        if key != "event" and SECRET_KEY.search(key):
            event[key] = REDACTED
        else:
            event[key] = redact_value(event[key])
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
        # plain_traceback: rich's or better-exceptions' formatters (used when installed)
        # print the local variables of every frame, passwords included.
        else structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks become text first, so the redaction sees them too.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _configured = True
