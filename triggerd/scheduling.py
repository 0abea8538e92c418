"""Scheduling: all unfinished builds + the concurrency cap → a Decision (pure).

Each BuildConfig's run policy says which of its queued builds may start; the global cap
(``maxConcurrentBuilds``) then admits them oldest first across configs, so one busy config
cannot starve the others for long. Deciding has no side effects: the orchestrator carries
the Decision out and asks again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from triggerd import policies
from triggerd.model.buildconfigs import RunPolicy
from triggerd.model.builds import Build, Phase

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    start: tuple[Build, ...] = ()
    cancel: tuple[Build, ...] = ()


def decide(unfinished: Iterable[Build], *, max_concurrent: int) -> Decision:
    """What to start and cancel now, given every build that is New, Pending or Running."""
    by_config: dict[tuple[str, str], list[Build]] = defaultdict(list)
    for build in unfinished:
        if not build.phase.terminal:
            by_config[(build.namespace, build.config_name or build.name)].append(build)
    cancel: list[Build] = []
    candidates: list[Build] = []
    running = 0
    for builds in by_config.values():
        running += sum(1 for b in builds if b.phase.active)
        doomed: set[str] = set()
        for policy in {policies.policy_of(b) for b in builds if b.phase is Phase.NEW}:
            for build in policies.SUPERSEDED[policy](builds):
                doomed.add(build.name)
                cancel.append(build)
        alive = [b for b in builds if b.name not in doomed]
        startable = [
            b
            for policy in {policies.policy_of(b) for b in alive if b.phase is Phase.NEW}
            for b in policies.RUNNABLE[policy](alive)
            if policies.policy_of(b) is policy
        ]
        # A Serial build only ever starts alone: once it runs, Parallel builds behind it wait.
        serial = [b for b in startable if policies.policy_of(b) is not RunPolicy.PARALLEL]
        candidates.extend(serial[:1] if serial else startable)
    free = max(0, max_concurrent - running)
    candidates.sort(key=lambda b: (b.meta.creation_timestamp or _EPOCH, b.namespace, b.number))
    return Decision(start=tuple(candidates[:free]), cancel=tuple(cancel))


def queue_depth(unfinished: Iterable[Build]) -> int:
    return sum(1 for b in unfinished if b.phase is Phase.NEW)
