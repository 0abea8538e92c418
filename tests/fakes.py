"""A deterministic fake Executor for API tests: builds finish when the test says so.

The engine hands it Pending builds exactly as it would the local executor; ``run`` reports
Running and then waits until the test calls :meth:`FakeExecutor.finish` (or ``fail``), or the
engine cancels the build. Nothing runs, nothing sleeps: tests wait for conditions with
:meth:`FakeExecutor.wait_started`. Log lines a test wants a build to have are written through
the real :class:`triggerd.logs.LogStore`, the way a real executor writes them: the log opens
when the build starts running and closes when it ends.
"""

from __future__ import annotations

import asyncio

from triggerd.executors import base
from triggerd.logs import LogStore, LogWriter
from triggerd.model.builds import Build, Reason

Key = tuple[str, str]

DIGEST = "sha256:" + "ab" * 32


class FakeExecutor:
    """Satisfies :class:`triggerd.executors.base.Executor`."""

    def __init__(self, logs: LogStore | None = None) -> None:
        self.logs = logs
        self._writers: dict[Key, LogWriter] = {}
        self._outcomes: dict[Key, asyncio.Future[base.Outcome]] = {}
        self._started: dict[Key, asyncio.Event] = {}
        self.running: set[Key] = set()
        self.cancel_calls: list[Key] = []

    # Executor protocol ----------------------------------------------------------------------
    async def run(self, build: Build, reporter: base.Reporter) -> base.Outcome:
        key = (build.namespace, build.name)
        outcome = self._outcome(key)
        if self.logs is not None:
            self._writers[key] = self.logs.open_writer(*key)
            self._writers[key].line(f"fake build {build.name} started")
        await reporter.running()
        self.running.add(key)
        self._event(key).set()
        try:
            return await outcome
        finally:
            self.running.discard(key)
            writer = self._writers.pop(key, None)
            if writer is not None:
                writer.close()

    async def cancel(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        self.cancel_calls.append(key)
        outcome = self._outcome(key)
        if key not in self.running or outcome.done():
            return False
        outcome.set_result(base.Cancelled())
        return True

    async def recover(self, build: Build) -> base.Outcome | None:
        return base.Failed(
            reason=Reason.SERVER_RESTARTED,
            message=Reason.SERVER_RESTARTED.message,
            log_snippet="",
        )

    # Test controls ----------------------------------------------------------------------------
    def log(self, namespace: str, name: str, data: bytes) -> None:
        """Append ``data`` to the log of a running build."""
        self._writers[(namespace, name)].write(data)

    def finish(self, namespace: str, name: str, outcome: base.Outcome | None = None) -> None:
        """End the build (now, or as soon as it starts) with ``outcome`` (default success)."""
        self._outcome((namespace, name)).set_result(
            outcome or base.Succeeded(digest=DIGEST, image_reference=f"registry.test/{name}")
        )

    def fail(self, namespace: str, name: str, reason: Reason = Reason.DOCKER_BUILD_FAILED) -> None:
        self.finish(
            namespace,
            name,
            base.Failed(reason=reason, message=reason.message, log_snippet="boom"),
        )

    async def wait_started(self, namespace: str, name: str) -> None:
        """Until the engine handed this build to :meth:`run` (it is Running then)."""
        async with asyncio.timeout(10):
            await self._event((namespace, name)).wait()

    def _outcome(self, key: Key) -> asyncio.Future[base.Outcome]:
        if key not in self._outcomes:
            self._outcomes[key] = asyncio.get_running_loop().create_future()
        return self._outcomes[key]

    def _event(self, key: Key) -> asyncio.Event:
        return self._started.setdefault(key, asyncio.Event())
