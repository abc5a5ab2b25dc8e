"""Errors the CLI reports as one clear line (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """An expected failure, phrased for the admin, with the exit code to use."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RestoreFailedError(UserError):
    """A restore as a new VM failed after the VM was created; names that VM and whether it
    was destroyed or kept (--keep-failed) for inspection."""

    def __init__(self, message: str, vm_name: str, vm_moref: str, kept: bool) -> None:
        super().__init__(message, 1)
        self.vm_name = vm_name
        self.vm_moref = vm_moref
        self.kept = kept
