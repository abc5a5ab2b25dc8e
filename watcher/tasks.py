"""Waiting for vSphere tasks.

Task outcomes are read through the PropertyCollector paths `info.state`,
`info.error` and `info.result` only: some tasks (RemoveSnapshot in govmomi's
simulator) name a snapshot as `info.entity`, which pyvmomi refuses to decode.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .session import Session
from .soap import VsphereError, VsphereFault, fault_from


class TaskTimeout(VsphereError):
    """The task did not finish in time (it may still be running in vCenter)."""


async def wait_for_task(
    session: Session,
    task: Any,
    *,
    timeout: float | None = 3600.0,
    poll_min: float = 0.05,
    poll_max: float = 2.0,
    description: str = "",
) -> Any:
    """Wait until `task` succeeds and return `info.result`; raise its fault on error.

    Polls with exponential back-off (fast for quick tasks, gentle for long ones).
    Cancelling the caller stops the wait, not the task.
    """
    what = description or f"task {task._moId}"
    delay = poll_min
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        props = await session.properties(task, ["info.state", "info.error", "info.result"])
        state = str(props.get("info.state", ""))
        if state == "success":
            return props.get("info.result")
        if state == "error":
            err = props.get("info.error")
            fault = fault_from(err, what) if err is not None else None
            raise fault or VsphereFault("TaskFailed", "task failed without a fault", None, what)
        if deadline is not None and loop.time() + delay > deadline:
            raise TaskTimeout(f"{what}: not finished after {timeout:g} s (state {state})")
        await asyncio.sleep(delay)
        delay = min(delay * 1.6, poll_max)
