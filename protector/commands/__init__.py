"""One module per `vigil` sub-command; each has `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib

# Order is the order of `vigil --help`.
MODULES = [
    "init",
    "key",
    "inventory",
    "policy",
    "backup",
    "listing",
    "restore",
    "export",
    "verify",
    "prune",
    "catalog",
    "watch",
    "status",
    "demo",
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # not built yet
            raise
        mod.register(sub)
