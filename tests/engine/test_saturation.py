"""While every run slot is taken, new builds cost no scheduling pass; a slot that frees up
starts the next build at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.factories import buildconfig_doc
from tests.fakes import FakeExecutor
from tests.support.processes import async_wait_for
from triggerd import metrics
from triggerd.engine import Engine, StartRequest
from triggerd.logs import LogStore
from triggerd.model.builds import Phase
from triggerd.model.requests import BuildRequest
from triggerd.settings import Settings
from triggerd.store.sqlite import SqliteStore

NS = "default"


class CountingEngine(Engine):
    """The real engine, counting the scheduling passes it runs."""

    passes = 0

    async def schedule_once(self):  # type: ignore[no-untyped-def]
        self.passes += 1
        return await super().schedule_once()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[CountingEngine, FakeExecutor]]:
    logs = LogStore(tmp_path / "logs")
    executor = FakeExecutor(logs)
    made = CountingEngine(
        settings=Settings(data_dir=tmp_path, max_concurrent_builds=2),
        store=SqliteStore(tmp_path / "triggerd.db"),
        executor=executor,
        logs=logs,
    )
    await made.start()
    yield made, executor
    await made.stop()


async def phase(engine: Engine, name: str) -> Phase:
    return (await engine.store.get_build(NS, name)).phase


async def test_queued_builds_cost_no_pass_while_every_slot_is_taken(
    engine: tuple[CountingEngine, FakeExecutor],
) -> None:
    eng, executor = engine
    await eng.create_buildconfig(buildconfig_doc("app", run_policy="Parallel"))
    for name in ("app-1", "app-2"):
        await eng.instantiate(NS, "app", BuildRequest())
        await executor.wait_started(NS, name)
    # Both slots are taken from here on: wait until a pass has seen that.
    await async_wait_for(lambda: eng._saturated, timeout=10, what="the scheduler to see it")
    before = eng.passes
    for _ in range(30):
        await eng.start_builds(
            [StartRequest(namespace=NS, config_name="app", request=BuildRequest())]
        )
    # Let the scheduler loop take every wake-up it was given.
    await async_wait_for(lambda: not eng._wake.is_set(), timeout=10, what="the wakes to drain")
    assert eng.passes == before
    assert await phase(eng, "app-32") is Phase.NEW
    # The queue depth gauge still follows (refreshed at most once a second).
    eng._depth_refreshed = -1e9
    await eng._refresh_queue_depth()
    assert metrics.QUEUE_DEPTH._value.get() == 30

    # A build ending frees a slot: the oldest queued build starts at once.
    executor.finish(NS, "app-1")
    await executor.wait_started(NS, "app-3")
    assert eng.passes > before
    assert await phase(eng, "app-4") is Phase.NEW
