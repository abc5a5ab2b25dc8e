"""`vigil demo`: the auto-protect tour on the bundled simulator (what `make demo` runs)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the auto-protect tour on the bundled vCenter simulator",
        description="Start the bundled simulator and the daemon, create a VM with data, watch it "
        "get protected with no manual step, take a CBT incremental, restore it as a new VM and "
        "compare the bytes. Needs no configuration; everything lives in a temporary directory.",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="afterwards keep the simulator and daemon running (status page) until Ctrl-C",
    )
    p.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    from protector.devtools.demo import tour
    from protector.devtools.simulator import SimulatorError
    from protector.errors import UserError

    try:
        return await tour(args.keep)
    except SimulatorError as exc:  # no Go, no govmomi, no sources: say what to install
        raise UserError(f"demo: {exc}") from None
