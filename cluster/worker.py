"""A worker node: procrastinate's worker running `backup_vm` jobs, kept running through
database outages, stopped gracefully by SIGTERM.

procrastinate's worker stops itself when one of its side tasks fails (the heartbeat, the
LISTEN connection once it cannot reconnect) — which is what a database outage does. So a
loop here starts it again, with backoff, until asked to stop. Its unfinished jobs stay
`doing` under the dead worker id; the stalled-job requeue puts them back.

SIGTERM (and SIGINT) cancel the worker task: procrastinate then stops fetching, waits up
to `shutdown_timeout_s` for running jobs, and aborts the rest, which are retried
(BackupRetry) — by another node if this one does not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

import psycopg
import psycopg_pool
import structlog
from procrastinate import exceptions as pexc

from cluster import nodes
from cluster.config import ClusterConfig, redact_url
from cluster.queue import (
    BACKUP_QUEUE,
    CONTEXT_KEY,
    MAINT_QUEUE,
    PRUNE_CRON,
    BackupCallable,
    WorkerContext,
    make_app,
    prepare_database,
)
from cluster.retention import Retention

log = structlog.get_logger("vigil.cluster.worker")


@dataclass(frozen=True)
class WorkerSettings:
    node: str
    concurrency: int = 2
    host_slots: int = 2
    datastore_slots: int = 4
    shutdown_timeout_s: float = 60.0
    stalled_after_s: float = 30.0
    heartbeat_interval_s: float = 10.0
    requeue_every_s: int = 10
    max_attempts: int = 5
    retry_wait_s: int = 5
    retry_exponential_s: int = 2
    node_heartbeat_s: float = 5.0
    lease_check_interval_s: float = 1.0
    fetch_poll_s: float = 5.0
    job_retention_days: float = 7.0
    failed_job_retention_days: float = 30.0
    prune_cron: str = PRUNE_CRON

    @classmethod
    def from_config(cls, cfg: ClusterConfig) -> WorkerSettings:
        return cls(
            node=cfg.node,
            concurrency=cfg.worker_concurrency,
            host_slots=cfg.host_slots,
            datastore_slots=cfg.datastore_slots,
            shutdown_timeout_s=cfg.shutdown_timeout_s,
            stalled_after_s=cfg.stalled_after_s,
            # procrastinate's rule of thumb: a worker is stalled after 3 missed beats.
            heartbeat_interval_s=min(10.0, cfg.stalled_after_s / 3),
            job_retention_days=cfg.job_retention_days,
            failed_job_retention_days=cfg.failed_job_retention_days,
        )


_RESTARTABLE = (psycopg.Error, psycopg_pool.PoolTimeout, pexc.ConnectorException, OSError)


async def run_worker(
    url: str,
    backup: BackupCallable,
    settings: WorkerSettings,
    *,
    stop: asyncio.Event | None = None,
    install_signal_handlers: bool = True,
    role: str = "worker",
) -> None:
    """Run until `stop` is set or SIGTERM/SIGINT arrives; survives database outages."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    beats = asyncio.create_task(
        nodes.heartbeat_loop(
            url, settings.node, role, interval=settings.node_heartbeat_s, stop=stop
        )
    )
    context = WorkerContext(
        url=url,
        node=settings.node,
        backup=backup,
        host_slots=settings.host_slots,
        datastore_slots=settings.datastore_slots,
        stalled_after_s=settings.stalled_after_s,
        max_attempts=settings.max_attempts,
        lease_check_interval=settings.lease_check_interval_s,
        lease_keep=settings.concurrency,
        retention=Retention.from_days(
            settings.job_retention_days, settings.failed_job_retention_days
        ),
    )
    backoff = 1.0
    try:
        while not stop.is_set():
            try:
                await _run_once(url, settings, context, stop)
                backoff = 1.0
            except _RESTARTABLE as exc:
                log.warning(
                    "worker lost the database; restarting",
                    node=settings.node,
                    database=redact_url(url),
                    error=str(exc).strip() or type(exc).__name__,
                    retry_in_s=backoff,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await stop.wait()
                backoff = min(backoff * 2, 10.0)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await beats
        await context.leases.close()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def _run_once(
    url: str, settings: WorkerSettings, context: WorkerContext, stop: asyncio.Event
) -> None:
    await prepare_database(url)
    app = make_app(
        url,
        node=settings.node,
        pool_size=settings.concurrency + 3,
        requeue_every_s=settings.requeue_every_s,
        max_attempts=settings.max_attempts,
        retry_wait_s=settings.retry_wait_s,
        retry_exponential_s=settings.retry_exponential_s,
        prune_cron=settings.prune_cron,
    )
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[BACKUP_QUEUE, MAINT_QUEUE],
                name=settings.node,
                concurrency=settings.concurrency,
                shutdown_graceful_timeout=settings.shutdown_timeout_s,
                install_signal_handlers=False,
                update_heartbeat_interval=settings.heartbeat_interval_s,
                stalled_worker_timeout=settings.stalled_after_s,
                fetch_job_polling_interval=settings.fetch_poll_s,
                additional_context={CONTEXT_KEY: context},
            ),
            name=f"procrastinate-worker-{settings.node}",
        )
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not worker.done():
            log.info("stopping: waiting for running jobs", timeout_s=settings.shutdown_timeout_s)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            return
        if exc := worker.exception():
            raise exc
        # procrastinate returns normally when a side task failed (it logged why).
        if not stop.is_set():
            raise OSError("the procrastinate worker stopped on its own")
