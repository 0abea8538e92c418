"""SqliteStore writes a run of instantiate calls in one group as a batch: few statements,
yet each call's outcome is its own, exactly as when they run one at a time."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.store.helpers import config, delivery, new_build, wait_queued, writer_held
from triggerd.errors import AlreadyExists, NotFound, QueueFull
from triggerd.model import buildconfigs, builds
from triggerd.model.builds import Phase
from triggerd.store.base import Instantiated
from triggerd.store.sqlite import SqliteStore


class TracedStore(SqliteStore):
    """A SqliteStore whose writer connection records every statement it runs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.statements: list[str] = []

    def _connect_writer(self) -> sqlite3.Connection:
        conn = super()._connect_writer()
        conn.set_trace_callback(self.statements.append)
        return conn


@pytest.fixture
async def traced(db_path: Path) -> AsyncIterator[TracedStore]:
    opened = TracedStore(db_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def raw_rows(db_path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db_path) as raw:
        return raw.execute(sql).fetchall()


async def queued_together(store: SqliteStore, *calls: Any) -> list[Any]:
    """Run ``calls`` (coroutines) in one writer group, in order; their outcomes."""
    async with writer_held(store):
        tasks = [asyncio.create_task(c) for c in calls]
        await wait_queued(store, len(tasks))
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def broken(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
    raise ValueError("factory bug")


async def test_a_run_of_calls_gets_separate_outcomes(traced: TracedStore, db_path: Path) -> None:
    await traced.create_buildconfig(config("blocker"))
    await traced.create_buildconfig(config("app"))
    await traced.create_buildconfig(config("other"))
    (old,) = (await traced.instantiate([new_build("other")], delivery=delivery("old"))).builds
    outcomes = await queued_together(
        traced,
        traced.instantiate([new_build("app")], delivery=delivery("a")),
        traced.instantiate([new_build("app")], delivery=delivery("a")),  # same group, same id
        traced.instantiate([new_build("ghost")]),
        traced.instantiate([new_build("app"), new_build("app", make=broken)]),
        traced.instantiate([new_build("app")], delivery=delivery("old")),  # seen before
        traced.instantiate([new_build("app"), new_build("other")], delivery=delivery("b")),
    )
    first, again, ghost, bad, redelivered, both = outcomes
    assert isinstance(first, Instantiated) and not first.duplicate
    assert [b.name for b in first.builds] == ["app-1"]
    assert isinstance(again, Instantiated) and again.duplicate and again.builds == first.builds
    assert isinstance(ghost, NotFound)
    assert isinstance(bad, ValueError)
    assert isinstance(redelivered, Instantiated) and redelivered.duplicate
    assert [b.name for b in redelivered.builds] == [old.name]
    assert isinstance(both, Instantiated)
    # The failed call's first build took no number: numbering stays gapless.
    assert [b.name for b in both.builds] == ["app-2", "other-2"]
    assert sorted(raw_rows(db_path, "SELECT name FROM builds")) == [
        ("app-1",),
        ("app-2",),
        ("blocker-1",),
        ("other-1",),
        ("other-2",),
    ]
    assert sorted(raw_rows(db_path, "SELECT key FROM deliveries")) == [("a",), ("b",), ("old",)]
    assert (await traced.get_buildconfig("default", "app")).last_version == 2
    assert (await traced.get_buildconfig("default", "other")).last_version == 2
    # What the calls were told equals what is stored.
    for build in (*first.builds, *both.builds):
        assert await traced.get_build("default", build.name) == build


async def test_a_batch_runs_a_handful_of_statements(traced: TracedStore) -> None:
    await traced.create_buildconfig(config("blocker"))
    await traced.create_buildconfig(config("app"))
    traced.statements.clear()
    calls = 40
    outcomes = await queued_together(
        traced,
        *(traced.instantiate([new_build("app")], delivery=delivery(f"d{i}")) for i in range(calls)),
    )
    assert all(isinstance(o, Instantiated) for o in outcomes)
    assert sorted(b.number for o in outcomes for b in o.builds) == list(range(1, calls + 1))
    # One at a time, each call would run seven statements: its own savepoint, a look-up of
    # its delivery id and of its config. The batch looks them all up at once.
    statements = traced.statements
    assert statements.count("SAVEPOINT request") == 1  # the blocker's
    assert statements.count("SAVEPOINT batch") == 1
    lookups = [s for s in statements if s.startswith("SELECT key, builds FROM deliveries")]
    assert len(lookups) == 1
    assert len([s for s in statements if "FROM buildconfigs" in s]) == 2  # blocker, app


async def test_a_constraint_sends_the_batch_one_call_at_a_time(
    store: SqliteStore, db_path: Path
) -> None:
    await store.create_buildconfig(config("blocker"))
    await store.create_buildconfig(config("app"))
    # Another writer took the name app-2 behind the store's back (an admin tool, say).
    with sqlite3.connect(db_path) as raw:
        row = raw.execute("SELECT * FROM builds WHERE name = 'blocker-0'").fetchone()
        assert row is None
        raw.execute(
            "INSERT INTO builds (namespace, name, config_name, number, phase, uid,"
            " resource_version, created, labels, doc) VALUES"
            " ('default', 'app-2', 'app', 99, 'New', 'x', 0, 0, '{}', '{}')"
        )
    outcomes = await queued_together(
        store,
        store.instantiate([new_build("app")], delivery=delivery("a")),
        store.instantiate([new_build("app")], delivery=delivery("b")),
    )
    first, second = outcomes
    assert isinstance(first, Instantiated) and [b.name for b in first.builds] == ["app-1"]
    assert isinstance(second, AlreadyExists)
    # The colliding call recorded nothing, so its delivery can be retried.
    assert raw_rows(db_path, "SELECT key FROM deliveries") == [("a",)]
    assert (await store.get_buildconfig("default", "app")).last_version == 1


async def test_the_queue_limit_counts_the_calls_before_it_in_the_batch(
    store: SqliteStore,
) -> None:
    await store.create_buildconfig(config("blocker"))
    await store.create_buildconfig(config("app"))
    outcomes = await queued_together(
        store,
        *(store.instantiate([new_build("app")], queue_limit=3) for _ in range(3)),
    )
    assert [type(o).__name__ for o in outcomes] == ["Instantiated", "Instantiated", "QueueFull"]
    assert isinstance(outcomes[2], QueueFull)
    queued = await store.queue_summary()
    # blocker-1 (queued first, in the group before) and app-1, app-2: the store runs nothing.
    assert queued.total == 3
    assert all(b.phase is Phase.NEW for o in outcomes[:2] for b in o.builds)
