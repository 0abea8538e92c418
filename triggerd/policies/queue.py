"""Views of one BuildConfig's builds shared by the policies (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from triggerd.model.buildconfigs import RunPolicy
from triggerd.model.builds import Build, Phase


def queued(builds: Sequence[Build]) -> list[Build]:
    """Builds still New, oldest (lowest number) first."""
    return sorted((b for b in builds if b.phase is Phase.NEW), key=lambda b: b.number)


def active(builds: Sequence[Build]) -> list[Build]:
    """Builds holding a run slot (Pending or Running)."""
    return [b for b in builds if b.phase.active]


def is_serial(build: Build) -> bool:
    return build.start_policy != RunPolicy.PARALLEL.value


def next_serial_or_parallel_run(builds: Sequence[Build]) -> list[Build]:
    """OpenShift's "next config build": nothing while any build runs; otherwise the leading
    Parallel builds of the queue, or the first Serial one alone when it leads."""
    if active(builds):
        return []
    leading: list[Build] = []
    for build in queued(builds):
        if is_serial(build):
            return leading or [build]
        leading.append(build)
    return leading
