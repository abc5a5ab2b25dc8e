"""The daemon's control socket: `vigil backup VM` on the daemon's host hands its job to the
running daemon instead of doing the work itself (protocol: docs/control-socket.md).

Why: a backup the admin asks for then runs under the daemon's limits (concurrent, per
host, per datastore), shows in `vigil status` and the metrics, never races the daemon's own
job of the same VM for the snapshot, and costs no process start-up, vCenter login or key
derivation. Who may ask: the socket lives in the 0700 state directory, is made 0600, and
each connection's peer (SO_PEERCRED) must be root or the daemon's own user. What may be
asked: one backup of a VM a policy protects, nothing else; anything the daemon cannot do
here is *declined* and the command does the backup in its own process as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from protector.controlsock import MAX_PATH_BYTES, is_socket, peer_uid
from protector.daemon.jobs import JobRecord, JobRequest, JobRunner
from protector.vsphere.vmlookup import VmAmbiguous, VmNotFound, find_vm

log = structlog.get_logger(__name__)

PROTOCOL = 1
MAX_REQUEST = 4096  # bytes of the one request line
REQUEST_TIMEOUT = 10.0  # seconds to send it
PROGRESS_EVERY = 0.5  # seconds between progress events while the job runs
_REQUEST_KEYS = {
    "v": int,
    "op": str,
    "vm": str,
    "repository": str,
    "vcenter": (str, type(None)),
    "full": bool,
}


class RequestError(ValueError):
    """A request line that is not a valid request (the reply names what is wrong)."""


@dataclass(frozen=True)
class BackupAsk:
    vm: str
    repository: str  # where the asking configuration keeps its points
    vcenter: str | None = None
    full: bool = False


def parse_request(line: bytes) -> BackupAsk:
    """One request line, checked strictly: a JSON object with exactly the known keys."""
    try:
        d = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise RequestError("the request is not a JSON object")
    unknown = sorted(set(d) - set(_REQUEST_KEYS))
    if unknown:
        raise RequestError(f"unknown request keys: {', '.join(unknown)}")
    for key, kind in _REQUEST_KEYS.items():
        value = d.get(key)
        # bool is an int to isinstance: a `true` must not pass for the version number
        if key in d and not (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        ):
            raise RequestError(f"request key {key!r} has the wrong type")
    if d.get("v") != PROTOCOL:
        raise RequestError(f"protocol version {d.get('v')!r}; this daemon speaks {PROTOCOL}")
    if d.get("op") != "backup":
        raise RequestError(f'unknown op {d.get("op")!r}; the one op is "backup"')
    vm = d.get("vm")
    if not isinstance(vm, str) or not vm.strip() or len(vm) > 1024:
        raise RequestError("request key 'vm' must name a VM (1 to 1024 characters)")
    repository = d.get("repository")
    if not isinstance(repository, str) or not repository:
        raise RequestError("request key 'repository' must name the client's repository")
    return BackupAsk(
        vm=vm, repository=repository, vcenter=d.get("vcenter"), full=bool(d.get("full", False))
    )


class ControlServer:
    def __init__(self, daemon: Any, path: Path) -> None:
        self.daemon = daemon
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        # vm key -> (asked at, future of the first record of that VM started since)
        self._waiters: dict[str, list[tuple[float, asyncio.Future[JobRecord]]]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> bool:
        """Serve, unless the path cannot be a socket here (too long, a file that is not a
        socket, another daemon serving it): then `vigil backup` runs jobs itself, as it
        always could, and the reason is logged."""
        path = self.path
        if len(os.fsencode(path)) > MAX_PATH_BYTES:
            return self._not_served("its path is longer than a Unix socket path may be")
        if os.path.lexists(path):  # noqa: ASYNC240 (one lstat at start-up)
            if not is_socket(path):
                return self._not_served("a file that is not a socket is in its place")
            try:
                _r, w = await asyncio.open_unix_connection(str(path))
            except OSError:
                path.unlink()  # left by a daemon that died: nobody answers on it
            else:
                w.close()
                return self._not_served("another vigil daemon serves it")
        try:
            self._server = await asyncio.start_unix_server(
                self._accept, str(path), limit=MAX_REQUEST
            )
            # Before chmod the socket is 0755 at worst (umask 022): connecting needs write
            # permission, so nobody but the owner could connect even in that moment.
            os.chmod(path, 0o600)
        except OSError as exc:
            return self._not_served(exc.strerror or str(exc))
        log.info("daemon.control_socket", path=str(path))
        return True

    def _not_served(self, why: str) -> bool:
        log.warning(
            "daemon.control_socket_unavailable",
            path=str(self.path),
            why=why,
            effect="`vigil backup VM` on this host runs the backup in its own process",
        )
        return False

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._server = None

    def job_finished(self, rec: JobRecord) -> None:
        """Every finished attempt (Daemon._job_finished): resolves the requests it answers."""
        waiting = self._waiters.get(rec.vm_key)
        if not waiting:
            return
        for asked, fut in list(waiting):
            if rec.started >= asked and not fut.done():
                fut.set_result(rec)

    # -- one connection --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the command went away; a job it started goes on
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid not in (0, os.geteuid()):
            log.warning("daemon.control_refused", uid=uid)
            await _send(writer, {"event": "error", "message": "only root or the daemon's user "
                                 "may hand backups to the daemon"})  # fmt: skip
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readline()
            ask = parse_request(line)
        except (RequestError, TimeoutError, ValueError) as exc:
            # ValueError: a line over MAX_REQUEST (asyncio's LimitOverrunError is one)
            await _send(writer, {"event": "error", "message": f"bad request: {exc}"})
            return
        await self._backup(ask, uid, writer)

    async def _backup(self, ask: BackupAsk, uid: int, writer: asyncio.StreamWriter) -> None:
        d = self.daemon
        runner = d.runner
        if not d.ready.is_set() or d.watcher is None or not isinstance(runner, JobRunner):
            return await _declined(writer, "the daemon has not read the inventory yet")
        if ask.repository != d.cfg.repository.location:
            # Another configuration sharing this state directory: its points belong elsewhere.
            return await _declined(writer, f"the daemon writes to {d.cfg.repository.location}")
        vms = d.watcher.tree.vms()
        if ask.vcenter:
            vms = [v for v in vms if d.vcenters.name_of(v.identity) == ask.vcenter]
        try:
            node = find_vm(vms, ask.vm)
        except VmAmbiguous as exc:
            await _send(writer, {"event": "error", "message": str(exc)})
            return
        except VmNotFound:
            return await _declined(writer, f"the daemon's inventory has no VM {ask.vm!r}")
        key = node.identity
        policy = d.planner.policy_of(key)
        if policy is None:
            return await _declined(writer, f"no policy protects {node.path}")
        # A job of this VM that started before the request would give a point older than
        # the request: wait for it, then ask for a new one.
        while key in runner.running:
            _req, running, _task = runner.running[key]
            await _send(writer, {"event": "waiting", "job": running.id, "reason": running.reason})
            await self._finished_since(key, running.started, writer)
        asked = time.time()
        fut: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, [])
        waiters.append((asked, fut))
        try:
            runner.cancel_retry(key)  # a person asks now: not after the back-off
            reason = f"requested by `vigil backup` (uid {uid})"
            if not d.backup_now(key, reason, full=ask.full) and not runner.busy(key):
                await _send(writer, {"event": "error", "message": "the daemon is stopping"})
                return
            log.info("daemon.control_backup", vm=node.path, uid=uid, full=ask.full)
            await _send(writer, {"event": "queued", "vm": node.path, "policy": policy.name})
            rec = await self._follow(key, asked, fut, writer)
        finally:
            waiters.remove((asked, fut))
            if not waiters:
                self._waiters.pop(key, None)
        await _send(
            writer,
            {
                "event": "finished",
                "job": rec.id,
                "attempt": rec.attempt,
                "outcome": rec.outcome,
                "error": rec.error,
                "point_id": rec.point_id,
                "point": rec.summary,
                "retry_pending": key in runner.retry_timers,
            },
        )

    async def _follow(
        self,
        key: str,
        asked: float,
        fut: asyncio.Future[JobRecord],
        writer: asyncio.StreamWriter,
    ) -> JobRecord:
        """Progress events while the job runs; the finished record."""
        runner = self.daemon.runner
        started: int | None = None
        last: tuple[str, int, int] | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_EVERY):
                    return await asyncio.shield(fut)
            entry = runner.running.get(key)
            if entry is None or entry[1].started < asked:
                continue
            rec = entry[1]
            if started != rec.id:
                started = rec.id
                await _send(writer, {"event": "started", "job": rec.id, "reason": rec.reason})
            now = (rec.phase, rec.read_bytes, rec.total_bytes)
            if now != last:
                last = now
                await _send(
                    writer,
                    {"event": "progress", "phase": now[0], "done": now[1], "total": now[2]},
                )

    async def _finished_since(
        self, key: str, since: float, writer: asyncio.StreamWriter
    ) -> JobRecord:
        fut: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, [])
        waiters.append((since, fut))
        try:
            return await fut
        finally:
            waiters.remove((since, fut))
            if not waiters:
                self._waiters.pop(key, None)


async def _send(writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
    writer.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def _declined(writer: asyncio.StreamWriter, why: str) -> None:
    await _send(writer, {"event": "declined", "why": why})


__all__ = ["BackupAsk", "ControlServer", "JobRequest", "RequestError", "parse_request"]
