"""Serial: one build of a BuildConfig at a time, in creation order (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from triggerd.model.builds import Build
from triggerd.policies import queue


def runnable(builds: Sequence[Build]) -> list[Build]:
    """The Serial build that may start now: the oldest queued one once nothing runs."""
    return [b for b in queue.next_serial_or_parallel_run(builds) if queue.is_serial(b)]
