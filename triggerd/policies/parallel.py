"""Parallel: builds start at once, except while a Serial build of the same config runs (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from triggerd.model.builds import Build
from triggerd.policies import queue


def runnable(builds: Sequence[Build]) -> list[Build]:
    if any(queue.is_serial(b) for b in queue.active(builds)):
        return []
    return [b for b in queue.queued(builds) if not queue.is_serial(b)]
