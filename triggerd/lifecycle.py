"""The Build phase machine: one transition table for every executor (pure).

New → Pending → Running → Complete | Failed | Error | Cancelled, with the shortcuts OpenShift
allows (a queued build can be cancelled or error out; a fast build may finish before it was
seen running). Terminal phases are final: a late report from an executor never revives a
build. Timestamps and duration are set here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from triggerd.errors import Conflict
from triggerd.model import specs
from triggerd.model.builds import Build, Phase, Reason, Stage

_TERMINAL = frozenset({Phase.COMPLETE, Phase.FAILED, Phase.ERROR, Phase.CANCELLED})

TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.PENDING, Phase.CANCELLED, Phase.ERROR, Phase.FAILED}),
    Phase.PENDING: frozenset({Phase.RUNNING} | _TERMINAL),
    Phase.RUNNING: _TERMINAL,
    Phase.COMPLETE: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.ERROR: frozenset(),
    Phase.CANCELLED: frozenset(),
}


def can_transition(current: Phase, target: Phase) -> bool:
    return target in TRANSITIONS[current]


def advance(
    build: Build,
    target: Phase,
    *,
    now: datetime,
    reason: Reason | None = None,
    message: str | None = None,
) -> Build:
    """Move ``build`` to ``target``; raise Conflict when the table forbids it."""
    current = build.status.phase
    if not can_transition(current, target):
        raise Conflict(
            f'build "{build.name}" cannot go from {current.value} to {target.value}'
            + (" (its phase is final)" if current.terminal else "")
        )
    status = build.status
    start = status.start_timestamp
    if target in (Phase.RUNNING,) or (target.terminal and current.active):
        start = start or now
    completion = status.completion_timestamp
    if target.terminal:
        completion = now
        if start is None:
            # A build that never ran still reports a zero duration rather than none.
            start = now
    new_reason = (
        reason.value if reason is not None else ("" if not target.terminal else status.reason)
    )
    new_message = message if message is not None else (reason.message if reason else status.message)
    return replace(
        build,
        status=replace(
            status,
            phase=target,
            reason=new_reason,
            message=new_message,
            cancelled=status.cancelled or target is Phase.CANCELLED,
            start_timestamp=start,
            completion_timestamp=completion,
        ),
    )


def cancel(build: Build, *, now: datetime) -> Build:
    """Cancel a build that has not started (a running one is stopped by its executor first)."""
    return advance(build, Phase.CANCELLED, now=now, reason=Reason.CANCELLED_BUILD)


def request_cancel(build: Build) -> Build:
    """Mark a running build for cancellation; the executor reports Cancelled when it stopped."""
    if build.status.phase.terminal:
        raise Conflict(f'build "{build.name}" has already finished ({build.status.phase.value})')
    return replace(build, status=replace(build.status, cancelled=True))


def record_stage(build: Build, stage: Stage) -> Build:
    stages = (*(s for s in build.status.stages if s.name != stage.name), stage)
    return replace(build, status=replace(build.status, stages=stages))


def record_revision(build: Build, revision: specs.SourceRevision) -> Build:
    return replace(build, spec=replace(build.spec, revision=revision))


def record_output(build: Build, *, digest: str, image_reference: str) -> Build:
    return replace(
        build,
        status=replace(
            build.status, output_digest=digest, output_docker_image_reference=image_reference
        ),
    )


def record_log_snippet(build: Build, snippet: str) -> Build:
    return replace(build, status=replace(build.status, log_snippet=snippet))


def snippet_of(log_text: str, lines: int = 10) -> str:
    """The last ``lines`` non-empty lines of a log: OpenShift's logSnippet."""
    tail = [line for line in log_text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail)
