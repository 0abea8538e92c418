"""SerialLatestOnly: like Serial, but only the newest queued build survives (pure).

When a newer build is queued, the older queued ones are cancelled; the running build is
never touched, it finishes and then the newest queued build starts. As in OpenShift, a
SerialLatestOnly build cancels every older queued build of its config, whatever policy
those were created under (runPolicy changed from Serial to SerialLatestOnly, say); builds
queued after it under another policy are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from triggerd.model.buildconfigs import RunPolicy
from triggerd.model.builds import Build
from triggerd.policies import queue, serial


def superseded(builds: Sequence[Build]) -> list[Build]:
    """Queued builds, of any policy, older than the newest queued SerialLatestOnly build."""
    waiting = queue.queued(builds)
    latest = [b.number for b in waiting if b.start_policy == RunPolicy.SERIAL_LATEST_ONLY]
    if not latest:
        return []
    return [b for b in waiting if b.number < latest[-1]]


def runnable(builds: Sequence[Build]) -> list[Build]:
    doomed = {b.name for b in superseded(builds)}
    return serial.runnable([b for b in builds if b.name not in doomed])
