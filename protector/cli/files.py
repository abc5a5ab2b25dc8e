"""`vigil files` and `vigil mount`: file-level restore, implemented in `explorer/`.

The explorer package registers its own sub-commands; protector only hands it the way a
command opens the configured repository, so explorer never imports protector.
"""

from __future__ import annotations

from typing import Any

from explorer.cli import add_commands
from protector.cli.common import config_of, open_repository


def register(sub: Any) -> None:
    add_commands(sub, open_repository=lambda args: open_repository(config_of(args)))
