"""Errors the CLI reports as one clear line (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """An expected failure, phrased for the admin, with the exit code to use."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
