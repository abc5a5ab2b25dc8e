"""Where the daemon's control socket is (docs/control-socket.md): `<state dir>/control.sock`,
in the service's private (0700) state directory, so only root and the service's user reach
it. Shared by the daemon (protector/daemon/control.py) and `vigil backup`
(protector/cli/handoff.py); no imports beyond the standard library."""

from __future__ import annotations

import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

SOCKET_NAME = "control.sock"
# repository/state.py's STATE_ENV and DEFAULT_STATE_DIR, written out: `vigil backup` reads
# this before it imports the repository code (tests/protector/test_cli_startup.py checks
# that the two agree).
STATE_ENV = "VIGIL_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/vigil/state"
# sun_path holds 108 bytes with its terminating NUL.
MAX_PATH_BYTES = 107


def control_socket_path(cfg: Any) -> Path:
    state = cfg.state_dir or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR
    return Path(state) / SOCKET_NAME


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def trusted_owners(path: Path) -> set[int] | None:
    """Who may serve the socket at `path`: root, us, and the owner of its directory (the
    service's user) — None when the directory is writable by group or others, where anyone
    could have put a socket of their own to answer a root `vigil backup` with lies."""
    from protector.config_checks import private_dir_owners

    try:
        return private_dir_owners(os.stat(path.parent))
    except OSError:
        return None
