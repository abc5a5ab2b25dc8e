"""The `vigil` command line: `main` (parser, error reporting, exit codes) in app.py, one
module per command (each with `register(subparsers)`), shared helpers in common.py and the
progress line in progress.py.

May import: every protector package (it is the top); never imported by them."""

from __future__ import annotations

from protector.cli.app import main

__all__ = ["main"]
