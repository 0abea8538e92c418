"""The election loop ends when it is cancelled, even at the moment a round completes.

On Python 3.11, ``asyncio.wait_for`` returns the awaited result when the awaited work
finishes in the same step as the cancellation of the task waiting for it: the
cancellation is lost, and a ``while True`` loop around it runs on after ``stop()`` (and
after the event loop's own shutdown cancelled it, which then waits for it forever)."""

from __future__ import annotations

import asyncio

from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.support.processes import async_wait_for
from triggerd.kube import Kube
from triggerd.leader import LeaderElector


class CancelledAsARoundEnds(LeaderElector):
    """Cancels its own campaign task just as one round returns, once asked to."""

    cancel_next_round = False

    async def try_once(self) -> bool:
        result = await super().try_once()
        if self.cancel_next_round and self._task is not None:
            self.cancel_next_round = False
            self._task.cancel()
        return result


async def test_a_cancel_that_coincides_with_the_end_of_a_round_stops_the_loop(
    kube: Kube, apiserver: FakeApiServer
) -> None:
    elector = CancelledAsARoundEnds(
        kube,
        namespace=NAMESPACE,
        name="cancel-race",
        identity="a",
        lease_duration_seconds=15,
        renew_interval_seconds=0.05,
    )
    elector.start()
    try:
        await async_wait_for(lambda: elector.is_leader, timeout=5, what="a leads")
        task = elector._task
        assert task is not None
        elector.cancel_next_round = True
        await async_wait_for(task.done, timeout=5, what="the campaign loop to end")
        assert task.cancelled()
    finally:
        await asyncio.wait_for(elector.stop(), 5)
