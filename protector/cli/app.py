"""The `vigil` command line.

Exit codes: 0 success; 1 the operation ran and found a problem (damage, a failed
backup); 2 the operation could not run (bad config or policies, login refused,
vCenter unreachable, bad arguments). Expected failures print one clear line to
stderr, never a traceback.

Start-up cost: `vigil --help` and a command's start import only what that command uses.
Each command module imports its heavy dependencies (aiohttp and pyVmomi for vCenter, the
repository, policies, explorer/dissect) inside its handler; this module recognises their
errors through `sys.modules` (an error of a package never imported cannot occur), so it
imports none of them. tests/protector/test_cli_startup.py holds this.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from protector import logs
from protector.cli.common import CleanStream, print_json
from protector.config import ConfigError
from protector.errors import UserError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

# One module per command, each with `register(subparsers)`; this order is `vigil --help`'s.
COMMANDS = (
    "init",
    "key",
    "inventory",
    "policy",
    "backup",
    "listing",
    "restore",
    "export",
    "files",
    "verify",
    "prune",
    "copy",
    "catalog",
    "watch",
    "status",
    "doctor",
    "pin",
    "stats",
    "demo",
)

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs but keeps indented blocks (examples) exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.strip("\n").split("\n\n"):
            if para.startswith("  "):
                out.append("\n".join(indent + ln for ln in para.splitlines()))
            else:
                out.append(super()._fill_text(para, width, indent))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    """Every `vigil` parser: the same help layout; sub-parsers inherit it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


EXIT_CODES = (
    "Exit codes: 0 ok; 1 the command ran and found a problem (damage, a failed backup, an "
    "RPO breach); 2 it could not run (configuration, policies, login, connection, a VM or "
    "point that does not exist). Errors are one line on stderr; with --json also a "
    '{"error": {...}} object on stdout.'
)


def _add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--config and the log options, accepted before or after the command. Below the top
    level their default is SUPPRESS, so a value given before the command is not reset."""
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("global options") if not top else p
    g.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help="configuration file (default: $VIGIL_CONFIG, else ./vigil.toml)",
    )
    g.add_argument(
        "--log-level",
        metavar="LEVEL",
        default=default(None),
        choices=("debug", "info", "warning", "error"),
        help="debug, info, warning or error (default: warning). Logs go to stderr, never "
        "into the output; `watch` logs to stdout at info",
    )
    g.add_argument(
        "--log-json",
        action="store_true",
        default=default(False),
        help="log JSON lines (the default when stderr is not a terminal)",
    )


def _subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `p`, depth first."""
    found: list[argparse.ArgumentParser] = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_subparsers(child))
    return found


def version() -> str:
    """The installed distribution's version (pyproject.toml's), "unknown" from a bare tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("vigil")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """argparse's "version" action, but the version is looked up only when asked for:
    importlib.metadata costs every other command ~15 ms of start-up."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"vigil {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="vigil",
        description=(
            "vigil keeps every VM your policies cover backed up: it watches vCenter, starts a "
            "backup the moment a VM comes into scope and whenever its RPO is due, and restores "
            "byte for byte to the same VM or a new one."
        ),
        epilog=(
            "Configuration: --config PATH, else $VIGIL_CONFIG, else ./vigil.toml (start from "
            "config.example.toml; policies: docs/policies.md). `vigil COMMAND --help` explains "
            "each command.\n\n"
            "First steps:\n\n"
            "  export VIGIL_CONFIG=/etc/vigil/vigil.toml VIGIL_VCENTER_PASSWORD=...\n"
            "  vigil inventory            # can vigil log in, what does it see?\n"
            "  vigil policy check         # what each policy covers, what nobody covers\n"
            "  vigil backup web-1         # one backup now\n"
            "  vigil watch                # the daemon (contrib/vigil.service)\n"
            "  vigil status               # protection at a glance\n\n" + EXIT_CODES
        ),
    )
    _add_global_options(p, top=True)
    p.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in COMMANDS:
        importlib.import_module(f"protector.cli.{name}").register(sub)
    for child in _subparsers(p):
        _add_global_options(child, top=False)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_level = args.log_level or "warning"
    stream = sys.stderr  # stdout carries command output (and --json)
    if args.command == "watch":
        stream = sys.stdout  # a daemon's log is its output: JSON lines for the journal
        log_level = args.log_level or "info"
    try:
        logs.configure(log_level, json=True if args.log_json else None, stream=stream)
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "watch":  # the daemon's stdout is its log, already escaped as JSON
        return _run(args)
    # Logging was configured above with the real streams: colours stay colours.
    out, err = sys.stdout, sys.stderr
    sys.stdout = CleanStream(out)  # type: ignore[assignment]
    sys.stderr = CleanStream(err, redact=True)  # type: ignore[assignment]
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = out, err


def _run(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        if args.command == "watch":  # the daemon handles its signals itself
            return asyncio.run(handler(args))
        code = asyncio.run(_stoppable(handler, args))
        if args.command in FAST_EXIT:
            _exit_now(code)
        return code
    except BrokenPipeError:
        # The reader went away (`vigil list --json | head`): nothing to report, and Python
        # must not complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        print("vigil: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("vigil: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except _expected_errors() as exc:
        return report_error(exc, json_output=bool(getattr(args, "json", False)))


# Commands whose process ends without Python's interpreter teardown (freeing every module's
# objects: 0.3-0.5 s after a backup, measured by bench/bench_backup_cli.py) once they have
# succeeded and closed everything: atexit handlers still run and output is flushed.
FAST_EXIT = frozenset({"backup"})


def _exit_now(code: int) -> None:
    """Ends the process at once, as the interpreter would after its atexit handlers, unless
    a non-daemon thread is still running (the normal exit waits for it)."""
    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        return  # the normal exit path reports or ignores it
    os._exit(code)


class Terminated(Exception):
    """The command was stopped by SIGTERM, after its cleanup ran."""


async def _stoppable(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command so that SIGTERM (systemd stopping a timer job, `timeout`, kill) cancels
    it as Ctrl-C does: the cleanup runs (a backup's snapshot is removed, a half-built VM
    destroyed) before the process exits. Without this, SIGTERM ends Python on the spot."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def on_term() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        return await handler(args)
    except asyncio.CancelledError:
        if stopped:
            raise Terminated() from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class _NeverRaised(Exception):
    """Stands in for the error class of a package this process never imported."""


def _loaded(module: str, name: str) -> type[BaseException]:
    """`module.name` if that module is imported, else a class no error is an instance of:
    the error classes of heavy packages without importing them."""
    mod = sys.modules.get(module)
    return getattr(mod, name) if mod is not None else _NeverRaised


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The errors reported as one line (exit 1 or 2) rather than a traceback."""
    return (
        ConfigError,
        UserError,
        OSError,
        _loaded("watcher.soap", "VsphereError"),
        _loaded("repository.errors", "RepositoryError"),
        _loaded("disk_io.errors", "DiskIoError"),
        _loaded("aiohttp", "ClientError"),
    )


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Failures to reach vCenter at all (refused, DNS, TLS, timeouts): could not run."""
    return (
        _loaded("watcher.soap", "VsphereConnectionError"),
        ConnectionError,
        ssl.SSLError,
        _loaded("aiohttp", "ClientError"),
    )


def describe_error(exc: BaseException) -> tuple[str, int, str]:
    """(one-line message, exit code, kind) for an error that ends a command."""
    VsphereError = _loaded("watcher.soap", "VsphereError")
    RepositoryError = _loaded("repository.errors", "RepositoryError")
    DiskIoError = _loaded("disk_io.errors", "DiskIoError")
    if isinstance(exc, ConfigError):
        return str(exc), EXIT_USAGE, "config"  # one line per problem: file:line: key: what
    if isinstance(exc, UserError):
        return str(exc), exc.exit_code, "user"
    if isinstance(exc, _connection_errors()):
        return (
            f"cannot reach vCenter: {_oneline(exc)}; if vCenter is down or restarting, run the "
            "command again once it is back (a snapshot left behind is removed then); otherwise "
            "check vcenter.url, the network and TLS settings (vcenter.ca_file / "
            "vcenter.thumbprint)",
            EXIT_USAGE,
            "connection",
        )
    if isinstance(exc, VsphereError):
        return f"vCenter: {_oneline(exc)}", EXIT_PROBLEM, "vsphere"
    if isinstance(exc, RepositoryError):
        return f"repository: {_oneline(exc)}", EXIT_PROBLEM, "repository"
    if isinstance(exc, DiskIoError):
        return f"disk I/O: {_oneline(exc)}", EXIT_PROBLEM, "disk"
    if isinstance(exc, OSError):
        return _describe_os_error(exc), EXIT_PROBLEM, "os"
    return f"{type(exc).__name__}: {_oneline(exc)}", EXIT_PROBLEM, "internal"


def _describe_os_error(exc: OSError) -> str:
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    what = exc.strerror or _oneline(exc)
    return f"{' → '.join(names)}: {what}" if names else what


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def report_error(exc: BaseException, *, json_output: bool) -> int:
    """Print the error as one line on stderr (and as a JSON object on stdout for --json, so
    scripts parse one format); returns the exit code."""
    message, code, kind = describe_error(exc)
    # Like the logs: an exception's text can quote a header, a URL with a password...
    message = logs.redact_text(message)
    for line in message.splitlines() or [""]:
        print(f"vigil: {line}", file=sys.stderr)
    if json_output:
        print_json({"error": {"type": kind, "message": message, "exit_code": code}})
    return code
