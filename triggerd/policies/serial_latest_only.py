"""SerialLatestOnly: like Serial, but only the newest queued build survives (pure).

When a newer build is queued, the older queued ones are cancelled; the running build is
never touched, it finishes and then the newest queued build starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from triggerd.model.buildconfigs import RunPolicy
from triggerd.model.builds import Build
from triggerd.policies import queue, serial


def superseded(builds: Sequence[Build]) -> list[Build]:
    """Queued SerialLatestOnly builds older than the newest queued one."""
    waiting = [b for b in queue.queued(builds) if b.start_policy == RunPolicy.SERIAL_LATEST_ONLY]
    return waiting[:-1]


def runnable(builds: Sequence[Build]) -> list[Build]:
    doomed = {b.name for b in superseded(builds)}
    return serial.runnable([b for b in builds if b.name not in doomed])
