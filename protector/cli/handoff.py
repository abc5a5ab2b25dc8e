"""`vigil backup VM` handing its job to the `vigil watch` running on this host, over the
daemon's control socket (protector/daemon/control.py, docs/control-socket.md).

None from hand_off means "do it here": no daemon answers, or it declined (the VM is not in
its inventory or no policy protects it, it is still starting). Then the command runs the
backup in its own process, as it did before daemons took requests."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import structlog

from protector.cli.backup import show_result
from protector.cli.progress import ProgressLine
from protector.controlsock import control_socket_path, is_socket, peer_uid, trusted_owners
from protector.errors import UserError

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 2.0
IDLE_TIMEOUT = 60.0  # the daemon sends an event at least every 15 s (control.KEEPALIVE)
MAX_EVENT = 1 << 20  # a finished event carries the point's record (every disk)


async def hand_off(cfg: Any, args: argparse.Namespace) -> int | None:
    """The exit code of the backup the daemon ran for us, or None (do it here)."""
    path = control_socket_path(cfg)
    if not is_socket(path):
        return None
    owners = trusted_owners(path)
    if owners is None:
        log.warning(
            "backup.control_socket_untrusted",
            socket=str(path),
            why="its directory is writable by group or others",
            fix="make the state directory 0700; backing up here meanwhile",
        )
        return None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_EVENT)
    except (OSError, TimeoutError) as exc:
        # A socket left by a daemon that died, or one we may not open: do it here.
        log.debug("backup.no_daemon", socket=str(path), error=str(exc))
        return None
    server = peer_uid(writer.get_extra_info("socket"))
    if server not in owners:
        writer.close()
        log.warning(
            "backup.control_socket_untrusted",
            socket=str(path),
            why=f"it is served by uid {server}, not root or the state directory's owner",
            fix="find out who runs that process; backing up here meanwhile",
        )
        return None
    try:
        ask = {
            "v": 1,
            "op": "backup",
            "vm": args.vm,
            "repository": cfg.repository.location,
            "vcenter": args.vcenter,
            "full": args.full,
        }
        writer.write(json.dumps(ask).encode() + b"\n")
        await writer.drain()
        return await _follow(reader, args)
    finally:
        writer.close()


async def _follow(reader: asyncio.StreamReader, args: argparse.Namespace) -> int | None:
    progress = ProgressLine(f"backup {args.vm}")
    job = None
    while True:
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):  # the daemon speaks every 15 s
                line = await reader.readline()
        except TimeoutError:
            raise UserError(
                f"the daemon said nothing for {IDLE_TIMEOUT:.0f} s (job {job or '?'}): it "
                "may be hung; `vigil status` shows whether the backup goes on",
                1,
            ) from None
        except ValueError:  # a line over MAX_EVENT
            raise UserError("the daemon sent an event too large to be one", 1) from None
        if not line:
            break
        try:
            ev = json.loads(line)
            kind = ev["event"]
        except (ValueError, TypeError, KeyError):
            raise UserError(
                f"the daemon sent something that is not an event: {line[:200]!r}", 1
            ) from None
        if kind == "declined":
            # Said at warning level: the admin expecting the daemon's limits and status
            # must see that this backup runs here instead.
            log.warning(
                "backup.handoff_declined",
                why=ev.get("why"),
                effect="backing up in this process, outside the daemon's limits",
            )
            return None
        if kind == "error":
            raise UserError(f"the running daemon refused the backup: {ev.get('message')}", 2)
        if kind == "waiting":
            progress.phase(f"waiting for the daemon's running backup of it (job {ev.get('job')})")
        elif kind == "queued":
            log.info("backup.handed_to_daemon", vm=ev.get("vm"), policy=ev.get("policy"))
            progress.phase("queued in the running daemon (its limits apply)")
        elif kind == "started":
            job = ev.get("job")
        elif kind == "progress":
            done, total = ev.get("done"), ev.get("total")
            if isinstance(done, int) and isinstance(total, int) and total > 0:
                progress(done, total)
            elif ev.get("phase"):
                progress.phase(str(ev["phase"]))
        elif kind == "finished":
            return _finished(args, ev, progress)
    raise UserError(
        f"the daemon stopped answering before the backup ended (job {job or '?'}): it may "
        "have been stopped; `vigil status` and `vigil list` show whether the point was made",
        1,
    )


def _finished(args: argparse.Namespace, ev: dict[str, Any], progress: ProgressLine) -> int:
    progress.finish()
    if ev.get("outcome") == "success":
        point = ev.get("point")
        if isinstance(point, dict):
            show_result(args, point, by=f"job {ev.get('job')}")
        else:  # a vApp member whose set's job made the point
            print(f"{ev.get('point_id')}: backed up by the running daemon (job {ev.get('job')})")
        return 0
    if ev.get("outcome") == "dropped":
        print(f"vigil: {ev.get('error')}", file=sys.stderr)
        return 1
    retry = "; the daemon retries it after its back-off" if ev.get("retry_pending") else ""
    print(
        f"vigil: the running daemon's backup of {args.vm} ended {ev.get('outcome')} (job "
        f"{ev.get('job')}, attempt {ev.get('attempt')}): {ev.get('error')}{retry}",
        file=sys.stderr,
    )
    return 1
