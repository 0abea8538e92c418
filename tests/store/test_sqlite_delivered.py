"""SqliteStore.delivered: the read a webhook's skip path makes to recognise a redelivery."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from tests.store.helpers import config, delivery, new_build
from triggerd.errors import NotFound
from triggerd.model import meta as metas
from triggerd.model.builds import Phase
from triggerd.store.sqlite import SqliteStore


async def test_an_unknown_delivery_is_none(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    await store.instantiate([new_build("app")])  # no delivery: nothing recorded
    assert await store.delivered("github:never") is None


async def test_a_recorded_delivery_answers_its_builds_as_they_are_now(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    first = await store.instantiate([new_build("app"), new_build("app")], delivery=delivery("d"))
    running = replace(first.builds[0], status=replace(first.builds[0].status, phase=Phase.RUNNING))
    await store.update_build(running)

    found = await store.delivered("d")
    assert found is not None
    assert [(b.name, b.phase) for b in found] == [("app-1", Phase.RUNNING), ("app-2", Phase.NEW)]
    # A read: nothing is created or numbered.
    assert (await store.get_buildconfig("default", "app")).last_version == 2

    await store.delete_builds("default", ["app-1"])
    pruned = await store.delivered("d")
    assert pruned is not None and [b.name for b in pruned] == ["app-2"]


async def test_a_failed_instantiation_is_not_a_recorded_delivery(store: SqliteStore) -> None:
    with pytest.raises(NotFound):
        await store.instantiate([new_build("ghost")], delivery=delivery("f"))
    assert await store.delivered("f") is None


async def test_a_pruned_delivery_is_forgotten(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    received = metas.now() - timedelta(days=8)
    await store.instantiate([new_build("app")], delivery=delivery("old", received))
    assert await store.delivered("old") is not None
    assert await store.prune_deliveries(metas.now() - timedelta(days=7)) == 1
    assert await store.delivered("old") is None
