"""The orchestrator with a real SQLite store and the fake executor: policies carried out,
history pruned, ConfigChange triggers, recovery after a crash, the concurrency cap."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import buildconfig_doc
from tests.fakes import FakeExecutor
from tests.support.processes import async_wait_for
from triggerd import metrics
from triggerd.engine import Engine, StartRequest
from triggerd.errors import Invalid
from triggerd.inputs import BinaryInputs
from triggerd.logs import LogStore
from triggerd.model import builds
from triggerd.model import meta as metas
from triggerd.model.builds import Phase
from triggerd.model.requests import BuildRequest
from triggerd.planning import archives
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery, Delivery
from triggerd.store.sqlite import SqliteStore

NS = "default"
EngineFactory = Callable[..., Any]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    engines: list[Engine] = []

    async def make(**settings: Any) -> tuple[Engine, FakeExecutor]:
        logs = LogStore(tmp_path / "logs")
        executor = FakeExecutor(logs)
        engine = Engine(
            settings=Settings(data_dir=tmp_path, **settings),
            store=SqliteStore(tmp_path / "triggerd.db"),
            executor=executor,
            logs=logs,
        )
        await engine.start()
        engines.append(engine)
        return engine, executor

    yield make
    for engine in engines:
        await engine.stop()


async def phase(engine: Engine, name: str) -> Phase:
    return (await engine.store.get_build(NS, name)).phase


async def wait_phase(engine: Engine, name: str, wanted: Phase) -> None:
    async def reached() -> bool:
        return await phase(engine, name) is wanted

    await async_wait_for(reached, timeout=10, what=f"{name} to be {wanted.value}")


async def names(engine: Engine, config: str) -> list[str]:
    page = await engine.store.list_builds(BuildQuery(namespace=NS, config_name=config))
    return [b.name for b in page.builds]


async def test_serial_latest_only_cancels_queued_builds_but_not_the_running_one(
    make_engine: EngineFactory,
) -> None:
    engine, executor = await make_engine(max_concurrent_builds=5)
    await engine.create_buildconfig(buildconfig_doc("slo", run_policy="SerialLatestOnly"))
    await engine.instantiate(NS, "slo", BuildRequest())
    await executor.wait_started(NS, "slo-1")
    for _ in range(3):
        await engine.instantiate(NS, "slo", BuildRequest())
    await wait_phase(engine, "slo-2", Phase.CANCELLED)
    await wait_phase(engine, "slo-3", Phase.CANCELLED)
    assert await phase(engine, "slo-1") is Phase.RUNNING
    assert await phase(engine, "slo-4") is Phase.NEW
    executor.finish(NS, "slo-1")
    await executor.wait_started(NS, "slo-4")
    assert await phase(engine, "slo-1") is Phase.COMPLETE


async def test_global_cap_holds_across_configs(make_engine: EngineFactory) -> None:
    engine, executor = await make_engine(max_concurrent_builds=1)
    for name in ("a", "b"):
        await engine.create_buildconfig(buildconfig_doc(name))
        await engine.instantiate(NS, name, BuildRequest())
    await executor.wait_started(NS, "a-1")
    assert await phase(engine, "b-1") is Phase.NEW
    executor.finish(NS, "a-1")
    await executor.wait_started(NS, "b-1")


async def test_history_limits_prune_builds_and_logs(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    engine, executor = await make_engine(max_concurrent_builds=1)
    doc = buildconfig_doc("h", successfulBuildsHistoryLimit=2, failedBuildsHistoryLimit=1)
    await engine.create_buildconfig(doc)
    for n in range(1, 6):
        await engine.instantiate(NS, "h", BuildRequest())
        await executor.wait_started(NS, f"h-{n}")
        if n % 2:
            executor.finish(NS, f"h-{n}")
        else:
            executor.fail(NS, f"h-{n}")
        await wait_phase(engine, f"h-{n}", Phase.COMPLETE if n % 2 else Phase.FAILED)

    async def pruned() -> bool:
        return await names(engine, "h") == ["h-3", "h-4", "h-5"]

    await async_wait_for(pruned, timeout=10, what="history pruned")
    assert not (tmp_path / "logs" / NS / "h-1.log").exists()
    assert (tmp_path / "logs" / NS / "h-5.log").exists()


async def test_config_change_trigger_starts_the_first_build(make_engine: EngineFactory) -> None:
    engine, executor = await make_engine()
    await engine.create_buildconfig(buildconfig_doc("cc", triggers=[{"type": "ConfigChange"}]))
    await executor.wait_started(NS, "cc-1")
    build = await engine.store.get_build(NS, "cc-1")
    assert build.triggered_by[0]["message"] == "Build configuration change"
    # applying the same document again changes nothing and starts nothing
    _, result = await engine.apply_buildconfig(
        buildconfig_doc("cc", triggers=[{"type": "ConfigChange"}])
    )
    assert result == "unchanged"
    assert await names(engine, "cc") == ["cc-1"]


async def test_builds_left_running_by_a_crash_end_as_error(make_engine: EngineFactory) -> None:
    engine, executor = await make_engine()
    await engine.create_buildconfig(buildconfig_doc("crash"))
    await engine.instantiate(NS, "crash", BuildRequest())
    await executor.wait_started(NS, "crash-1")
    # A second engine on the same database is what a restart after kill -9 sees.
    second, _ = await make_engine()
    build = await second.store.get_build(NS, "crash-1")
    assert build.phase is Phase.ERROR
    assert build.status.reason == "ServerRestarted"
    assert build.status.completion_timestamp is not None


async def test_cancel_of_queued_build_and_delete_of_config(make_engine: EngineFactory) -> None:
    engine, executor = await make_engine(max_concurrent_builds=1)
    await engine.create_buildconfig(buildconfig_doc("d"))
    await engine.instantiate(NS, "d", BuildRequest())
    await engine.instantiate(NS, "d", BuildRequest())
    await executor.wait_started(NS, "d-1")
    cancelled = await engine.cancel_build(NS, "d-2")
    assert cancelled.phase is Phase.CANCELLED
    await engine.delete_buildconfig(NS, "d")
    assert (NS, "d-1") in executor.cancel_calls
    assert await names(engine, "d") == []


async def test_config_files_apply_concurrently_last_document_wins_and_errors_name_the_first(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    engine, _ = await make_engine()
    folder = tmp_path / "configs"
    folder.mkdir()
    many = [buildconfig_doc(f"c{i}") for i in range(150)]
    # The same config twice: applied in file order, so the second document is what stays.
    first = buildconfig_doc("twice", uri="https://git.example.com/team/first.git")
    second = buildconfig_doc("twice", uri="https://git.example.com/team/second.git")
    (folder / "a.yaml").write_text(yaml.safe_dump_all([*many, first]))
    (folder / "b.yaml").write_text(yaml.safe_dump_all([second]))
    results = await engine.load_buildconfig_files([folder])
    assert len(results) == 152
    assert results[:2] == [f"{NS}/c0 created", f"{NS}/c1 created"]
    assert results[-2:] == [f"{NS}/twice created", f"{NS}/twice configured"]
    twice = await engine.store.get_buildconfig(NS, "twice")
    assert twice.spec.source.git is not None
    assert twice.spec.source.git.uri.endswith("/second.git")
    assert len(await engine.store.list_buildconfigs()) == 151

    # A bad document: every other config is still applied, and the error raised is the
    # first bad one in file order, with its field path.
    bad = buildconfig_doc("bad")
    bad["spec"]["runPolicy"] = "Sometimes"
    worse = buildconfig_doc("worse")
    worse["spec"]["runPolicy"] = "Never"
    (folder / "c.yaml").write_text(yaml.safe_dump_all([bad, buildconfig_doc("late"), worse]))
    with pytest.raises(Invalid) as info:
        await engine.load_buildconfig_files([folder])
    assert "bad" in str(info.value) and "spec.runPolicy" in str(info.value)
    assert (await engine.store.get_buildconfig(NS, "late")).name == "late"


async def test_housekeeping_forgets_old_deliveries_and_removes_unused_uploads(
    tmp_path: Path,
) -> None:
    logs = LogStore(tmp_path / "logs")
    executor = FakeExecutor(logs)
    inputs = BinaryInputs(tmp_path)
    engine = Engine(
        settings=Settings(data_dir=tmp_path, max_concurrent_builds=1),
        store=SqliteStore(tmp_path / "triggerd.db"),
        executor=executor,
        logs=logs,
        inputs=inputs,
    )
    await engine.start()
    try:
        first, second, orphan, fresh = ("sha256:" + c * 64 for c in "abcd")
        long_ago = time.time() - 3600
        for digest in (first, second, orphan, fresh):
            path = archives.upload_path(tmp_path, digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"upload")
            if digest != fresh:  # fresh: just uploaded, its build may not be stored yet
                os.utime(path, (long_ago, long_ago))

        def on_disk() -> set[str]:
            return set(inputs.kept())

        await engine.create_buildconfig(buildconfig_doc("bin", successfulBuildsHistoryLimit=1))
        for n, digest in ((1, first), (2, second)):
            request = BuildRequest(annotations={builds.BINARY_INPUT_ANNOTATION: digest})
            await engine.instantiate(NS, "bin", request)
            await executor.wait_started(NS, f"bin-{n}")
            executor.finish(NS, f"bin-{n}")
            await wait_phase(engine, f"bin-{n}", Phase.COMPLETE)

        # bin-2's completion pruned bin-1, the only build naming the first upload.
        async def first_gone() -> bool:
            return first not in on_disk()

        await async_wait_for(first_gone, timeout=10, what="the first upload removed")
        assert await names(engine, "bin") == ["bin-2"]
        await engine.housekeeping()
        assert on_disk() == {second, fresh}  # the orphan went; the fresh one waits
        await engine.delete_build(NS, "bin-2")
        assert on_disk() == {fresh}

        # Delivery ids older than deliveryRetention (7 days) are forgotten: a redelivery
        # then builds again, as documented.
        old = Delivery(key="github:old", received=metas.now() - timedelta(days=8))
        start = StartRequest(namespace=NS, config_name="bin", request=BuildRequest())
        made = await engine.start_builds([start], delivery=old)
        again = await engine.start_builds([start], delivery=old)
        assert again.duplicate
        await engine.housekeeping()
        after = await engine.start_builds([start], delivery=old)
        assert not after.duplicate
        assert after.builds[0].number > made.builds[0].number
    finally:
        await engine.stop()


def cancelled_count() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "triggerd_builds_total",
        {"phase": "Cancelled", "reason": "CancelledBuild", "strategy": "Docker"},
    )
    return value or 0.0


async def test_cancelling_queued_builds_counts_them_and_applies_history_limits(
    make_engine: EngineFactory,
) -> None:
    """Queued builds never reach an executor: their cancel (by hand, or a SerialLatestOnly
    supersede) is where they end, so it is where they are counted and the config's failed
    history (Failed, Error, Cancelled) is trimmed."""
    engine, executor = await make_engine(max_concurrent_builds=1)
    await engine.create_buildconfig(
        buildconfig_doc("q", run_policy="SerialLatestOnly", failedBuildsHistoryLimit=1)
    )
    await engine.instantiate(NS, "q", BuildRequest())
    await executor.wait_started(NS, "q-1")
    before = cancelled_count()
    await engine.instantiate(NS, "q", BuildRequest())  # q-2 waits
    await engine.cancel_build(NS, "q-2")
    assert cancelled_count() == before + 1
    await engine.instantiate(NS, "q", BuildRequest())  # q-3 waits
    await engine.instantiate(NS, "q", BuildRequest())  # supersedes q-3
    await wait_phase(engine, "q-3", Phase.CANCELLED)
    assert cancelled_count() == before + 2
    # failedBuildsHistoryLimit 1: only the newest cancelled build is kept
    assert await names(engine, "q") == ["q-1", "q-3", "q-4"]


async def test_recovery_run_again_leaves_followed_builds_alone(
    make_engine: EngineFactory,
) -> None:
    """A leader whose start failed half-way recovers again: builds it already follows are
    not handed to the executor a second time."""
    engine, executor = await make_engine()
    await engine.create_buildconfig(buildconfig_doc("r"))
    await engine.instantiate(NS, "r", BuildRequest())
    await executor.wait_started(NS, "r-1")
    await engine.recover()  # the fake executor would call a second run a crash (Error)
    assert await phase(engine, "r-1") is Phase.RUNNING
    executor.finish(NS, "r-1")
    await wait_phase(engine, "r-1", Phase.COMPLETE)
