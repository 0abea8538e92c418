"""What the orchestrator needs from an executor, and what an executor reports.

An executor takes a Build whose phase is Pending, runs the plan that
:mod:`triggerd.planning` renders for it, and reports progress through a :class:`Reporter`
and the final :class:`Outcome`. It never decides phases itself: the orchestrator feeds its
reports through :mod:`triggerd.lifecycle`. Nothing strategy-specific lives in an executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from triggerd.model.builds import Build, Reason, Stage
from triggerd.model.specs import SourceRevision


@dataclass(frozen=True, slots=True, kw_only=True)
class Succeeded:
    digest: str  # "sha256:…" of the pushed manifest, "" when the build has no output
    image_reference: str  # where it was pushed ("registry/repo:tag"), "" without output


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    reason: Reason
    message: str  # human explanation; the Reason's standard message when nothing better
    log_snippet: str  # the last lines of the build log


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancelled:
    """The build stopped because :meth:`Executor.cancel` was called."""


Outcome = Succeeded | Failed | Cancelled


class Reporter(Protocol):
    """Progress callbacks; each is awaited so the orchestrator can persist before going on."""

    async def running(self) -> None:
        """The build's first process started (Pending → Running)."""

    async def revision(self, revision: SourceRevision) -> None:
        """The exact commit being built is known (recorded in spec.revision)."""

    async def stage(self, stage: Stage) -> None:
        """A stage finished (FetchInputs, PullImages, Build, PushImage) with its timing."""


class Executor(Protocol):
    async def run(self, build: Build, reporter: Reporter) -> Outcome:
        """Run ``build`` to the end and say how it ended. Enforces
        spec.completionDeadlineSeconds (→ Failed/ExceededRetryTimeout). Never raises for a
        build failure; raises only for a bug or when it cannot start at all."""

    async def cancel(self, namespace: str, name: str) -> bool:
        """Stop that build (its whole process tree / Job); False when it is not running."""

    async def recover(self, build: Build) -> Outcome | None:
        """After a restart: an Outcome for a build left Pending/Running, or None when the
        executor is still running it (a Kubernetes Job survives; host processes do not)."""
