"""SqliteStore.instantiate: numbering, delivery dedup, atomicity and group commit isolation."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.store.helpers import config, delivery, factory, new_build, wait_queued, writer_held
from triggerd.errors import AlreadyExists, Conflict, NotFound, TemporaryError
from triggerd.model import buildconfigs, builds, requests
from triggerd.model import meta as metas
from triggerd.model.builds import Phase
from triggerd.store.base import BuildQuery, Instantiated
from triggerd.store.sqlite import SqliteStore


def raw_rows(db_path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(db_path) as raw:
        return raw.execute(sql).fetchall()


async def test_sequential_numbering_bumps_last_version(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    seen = []
    for _ in range(5):
        (made,) = (await store.instantiate([new_build("app")])).builds
        seen.append((made.name, made.number, made.config_name))
    assert seen == [(f"app-{n}", n, "app") for n in range(1, 6)]
    assert (await store.get_buildconfig("default", "app")).last_version == 5


async def test_factory_sees_the_config_with_its_new_last_version(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    seen: list[tuple[int, int, str]] = []
    plain = factory()

    def make(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
        seen.append((bc.last_version, number, bc.meta.resource_version))
        return plain(bc, number)

    result = await store.instantiate([new_build("app", make=make), new_build("app", make=make)])
    assert [(lv, n) for lv, n, _ in seen] == [(1, 1), (2, 2)]
    assert [b.meta.resource_version for b in result.builds] == [rv for _, _, rv in seen]


async def test_hundred_concurrent_calls_get_numbers_without_gaps(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    results = await asyncio.gather(*(store.instantiate([new_build("app")]) for _ in range(100)))
    numbers = sorted(r.builds[0].number for r in results)
    assert numbers == list(range(1, 101))
    assert len({r.builds[0].meta.uid for r in results}) == 100
    assert (await store.get_buildconfig("default", "app")).last_version == 100
    page = await store.list_builds(BuildQuery(config_name="app"))
    assert [b.number for b in page.builds] == list(range(1, 101))
    # They were committed in groups, not one fsync each.
    assert store.stats().groups < 100


async def test_one_call_creates_builds_of_several_configs_atomically(
    store: SqliteStore, db_path: Path
) -> None:
    await store.create_buildconfig(config("api"))
    await store.create_buildconfig(config("web"))
    result = await store.instantiate(
        [new_build("api"), new_build("web"), new_build("api")], delivery=delivery("k")
    )
    assert [b.name for b in result.builds] == ["api-1", "web-1", "api-2"]
    assert not result.duplicate
    (recorded,) = raw_rows(db_path, "SELECT builds FROM deliveries WHERE key = 'k'")
    assert json.loads(recorded[0]) == [
        ["default", "api-1"],
        ["default", "web-1"],
        ["default", "api-2"],
    ]


async def test_missing_config_aborts_the_whole_call(store: SqliteStore, db_path: Path) -> None:
    await store.create_buildconfig(config("app"))
    with pytest.raises(NotFound) as info:
        await store.instantiate(
            [new_build("app"), new_build("ghost"), new_build("app")], delivery=delivery("k")
        )
    assert info.value.name == "ghost"
    assert (await store.get_buildconfig("default", "app")).last_version == 0
    assert raw_rows(db_path, "SELECT name FROM builds") == []
    # The delivery was not recorded, so the sender's retry is not taken for a duplicate.
    await store.create_buildconfig(config("ghost"))
    retried = await store.instantiate(
        [new_build("app"), new_build("ghost"), new_build("app")], delivery=delivery("k")
    )
    assert not retried.duplicate
    assert [b.name for b in retried.builds] == ["app-1", "ghost-1", "app-2"]


async def test_factory_errors_reach_the_caller_and_write_nothing(
    store: SqliteStore, db_path: Path
) -> None:
    await store.create_buildconfig(config("app"))

    def broken(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
        raise ValueError("bad override")

    with pytest.raises(ValueError, match="bad override"):
        await store.instantiate([new_build("app"), new_build("app", make=broken)])
    assert raw_rows(db_path, "SELECT name FROM builds") == []
    assert (await store.get_buildconfig("default", "app")).last_version == 0


async def test_build_names_that_collide_are_already_exists(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    plain = factory()

    def same_name(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
        made = plain(bc, number)
        return replace(made, meta=replace(made.meta, name="app-fixed"))

    await store.instantiate([new_build("app", make=same_name)])
    with pytest.raises(AlreadyExists):
        await store.instantiate([new_build("app", make=same_name)])


async def test_duplicate_delivery_returns_the_original_builds_as_they_are_now(
    store: SqliteStore,
) -> None:
    await store.create_buildconfig(config("app"))
    first = await store.instantiate([new_build("app"), new_build("app")], delivery=delivery("d1"))
    assert not first.duplicate
    running = replace(first.builds[0], status=replace(first.builds[0].status, phase=Phase.RUNNING))
    await store.update_build(running)

    again = await store.instantiate([new_build("app")], delivery=delivery("d1"))
    assert again.duplicate
    assert [b.name for b in again.builds] == ["app-1", "app-2"]
    assert [b.phase for b in again.builds] == [Phase.RUNNING, Phase.NEW]
    assert (await store.get_buildconfig("default", "app")).last_version == 2

    # Pruned builds are simply no longer part of the answer.
    await store.delete_builds("default", ["app-1"])
    pruned = await store.instantiate([new_build("app")], delivery=delivery("d1"))
    assert pruned.duplicate and [b.name for b in pruned.builds] == ["app-2"]
    await store.delete_builds("default", ["app-2"])
    gone = await store.instantiate([new_build("app")], delivery=delivery("d1"))
    assert gone.duplicate and gone.builds == ()


async def test_fifty_concurrent_calls_with_one_key_create_once(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    results = await asyncio.gather(
        *(store.instantiate([new_build("app")], delivery=delivery("same")) for _ in range(50))
    )
    originals = [r for r in results if not r.duplicate]
    assert len(originals) == 1
    (created,) = originals[0].builds
    assert all(r.builds == (created,) for r in results)
    assert (await store.get_buildconfig("default", "app")).last_version == 1
    assert [b.name for b in (await store.list_builds(BuildQuery())).builds] == ["app-1"]


async def test_same_key_in_one_group_creates_once(store: SqliteStore) -> None:
    await store.create_buildconfig(config("blocker"))
    await store.create_buildconfig(config("app"))
    async with writer_held(store):
        tasks = [
            asyncio.create_task(store.instantiate([new_build("app")], delivery=delivery("k")))
            for _ in range(5)
        ]
        await wait_queued(store, 5)
    results = await asyncio.gather(*tasks)
    assert [r.duplicate for r in results] == [False, True, True, True, True]
    assert {r.builds[0].name for r in results} == {"app-1"}


async def test_deliveries_are_remembered_across_restart(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await store.create_buildconfig(config("app"))
    first = await store.instantiate([new_build("app")], delivery=delivery("github:abc"))
    await store.close()

    restarted = SqliteStore(db_path)
    await restarted.open()
    try:
        again = await restarted.instantiate([new_build("app")], delivery=delivery("github:abc"))
        assert again.duplicate and again.builds == first.builds
        fresh = await restarted.instantiate([new_build("app")], delivery=delivery("github:def"))
        assert not fresh.duplicate and fresh.builds[0].number == 2
    finally:
        await restarted.close()


async def test_cached_config_equals_a_fresh_parse_of_the_stored_document(
    store: SqliteStore, db_path: Path
) -> None:
    doc = {**config("app").raw, "status": {"lastVersion": 4, "note": "kept"}}
    await store.create_buildconfig(buildconfigs.parse(doc))
    await store.instantiate([new_build("app"), new_build("app")])
    served = await store.get_buildconfig("default", "app")  # from the writer's cache
    (stored_doc,) = raw_rows(db_path, "SELECT doc FROM buildconfigs")
    assert served == buildconfigs.parse(json.loads(stored_doc[0]))
    assert served.last_version == 6
    assert served.to_dict()["status"] == {"lastVersion": 6, "note": "kept"}
    assert served.to_dict() == json.loads(stored_doc[0])


async def test_returned_builds_equal_what_is_read_back(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    request = requests.BuildRequest(triggered_by=({"message": "Image change"},))
    (made,) = (await store.instantiate([new_build("app", make=factory(request))])).builds
    assert await store.get_build("default", made.name) == made
    assert made.meta.creation_timestamp is not None
    assert made.meta.creation_timestamp.microsecond == 0


# Group commit ------------------------------------------------------------------------------


async def test_each_request_in_a_group_gets_its_own_outcome(
    store: SqliteStore, db_path: Path
) -> None:
    await store.create_buildconfig(config("blocker"))
    app = await store.create_buildconfig(config("app"))
    await store.replace_buildconfig(config("app", labels={"v": "2"}))

    def broken(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
        raise ValueError("factory bug")

    async with writer_held(store):
        groups_before = store.stats().groups
        calls = [
            store.instantiate([new_build("app")], delivery=delivery("a")),
            store.instantiate([new_build("ghost")]),
            store.create_buildconfig(config("app")),
            store.replace_buildconfig(
                config("app", labels={"v": "3"}),
                expected_resource_version=app.meta.resource_version,
            ),
            store.instantiate([new_build("app"), new_build("app", make=broken)]),
            store.instantiate([new_build("app")], delivery=delivery("b")),
        ]
        tasks = [asyncio.create_task(c) for c in calls]
        await wait_queued(store, len(tasks))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert store.stats().groups == groups_before + 2  # the blocker's group, then all of these
    assert store.stats().largest_group >= len(tasks)
    ok_a, ghost, exists, stale, broken_call, ok_b = outcomes
    assert isinstance(ghost, NotFound)
    assert isinstance(exists, AlreadyExists)
    assert isinstance(stale, Conflict) and not isinstance(stale, AlreadyExists)
    assert isinstance(broken_call, ValueError)
    assert isinstance(ok_a, Instantiated) and isinstance(ok_b, Instantiated)
    assert [b.name for b in ok_a.builds + ok_b.builds] == ["app-1", "app-2"]
    # What committed is exactly the successful requests' work.
    assert sorted(raw_rows(db_path, "SELECT name FROM builds")) == [
        ("app-1",),
        ("app-2",),
        ("blocker-1",),
    ]
    assert sorted(raw_rows(db_path, "SELECT key FROM deliveries")) == [("a",), ("b",)]
    current = await store.get_buildconfig("default", "app")
    assert current.last_version == 2 and current.meta.labels == {"v": "2"}


async def test_a_storage_failure_fails_the_whole_group_and_writes_nothing(
    store: SqliteStore, db_path: Path
) -> None:
    await store.create_buildconfig(config("blocker"))
    await store.create_buildconfig(config("app"))
    plain = factory()

    def disk_fails(bc: buildconfigs.BuildConfig, number: int) -> builds.Build:
        plain(bc, number)
        raise sqlite3.OperationalError("disk I/O error")

    version_before = (await store.list_builds(BuildQuery())).resource_version
    async with writer_held(store):
        tasks = [
            asyncio.create_task(store.instantiate([new_build("app")], delivery=delivery("a"))),
            asyncio.create_task(store.instantiate([new_build("app", make=disk_fails)])),
            asyncio.create_task(store.create_buildconfig(config("new"))),
        ]
        await wait_queued(store, len(tasks))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert all(isinstance(o, TemporaryError) for o in outcomes), outcomes
    assert len({id(o) for o in outcomes}) == 3  # each caller raises its own exception
    assert store.stats().failed_groups == 1
    assert raw_rows(db_path, "SELECT name FROM builds") == [("blocker-1",)]
    assert raw_rows(db_path, "SELECT key FROM deliveries") == []
    assert [c.name for c in await store.list_buildconfigs()] == ["app", "blocker"]
    assert (await store.get_buildconfig("default", "app")).last_version == 0

    # The store carries on, and versions never go back to ones handed out in the failed group.
    (made,) = (await store.instantiate([new_build("app")], delivery=delivery("a"))).builds
    assert made.name == "app-1"
    assert int(made.meta.resource_version) > int(version_before) + 1


async def test_disk_full_is_temporary_and_rolls_back_the_group(
    store: SqliteStore, db_path: Path
) -> None:
    await store.create_buildconfig(config("blocker"))
    await store.create_buildconfig(config("app"))

    def limit_pages(conn: sqlite3.Connection) -> None:
        # A real SQLITE_FULL: cap the file at its current size for the writer connection.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")

    await store._write(limit_pages)
    huge = requests.BuildRequest(annotations={"blob": "x" * 200_000})
    async with writer_held(store):
        tasks = [
            asyncio.create_task(store.instantiate([new_build("app")])),
            asyncio.create_task(store.instantiate([new_build("app", make=factory(huge))])),
        ]
        await wait_queued(store, len(tasks))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, TemporaryError) for o in outcomes), outcomes
    assert "full" in str(outcomes[1])
    assert raw_rows(db_path, "SELECT name FROM builds") == [("blocker-1",)]

    def unlimit(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count = 1073741823")

    await store._write(unlimit)
    (made,) = (await store.instantiate([new_build("app")])).builds
    assert made.name == "app-1"


async def test_a_locked_database_is_temporary(db_path: Path) -> None:
    store = SqliteStore(db_path, busy_timeout=0.05)
    await store.open()
    try:
        await store.create_buildconfig(config("app"))
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(TemporaryError, match="locked") as info:
                await store.instantiate([new_build("app")], delivery=delivery("k"))
            assert info.value.delay > 0
            # Reads carry on while the file is write-locked (WAL).
            assert (await store.get_buildconfig("default", "app")).last_version == 0
        finally:
            other.execute("ROLLBACK")
            other.close()
        result = await store.instantiate([new_build("app")], delivery=delivery("k"))
        assert not result.duplicate and result.builds[0].name == "app-1"
    finally:
        await store.close()


async def test_reads_and_the_loop_run_while_the_writer_is_busy(store: SqliteStore) -> None:
    await store.create_buildconfig(config("blocker"))
    await store.create_buildconfig(config("app"))
    async with writer_held(store):
        # The writer is inside an open transaction; the event loop and readers are not held.
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        assert time.perf_counter() - started < 1.0
        assert (await store.get_buildconfig("default", "blocker")).last_version == 0
        pending = asyncio.create_task(store.instantiate([new_build("app")]))
        await wait_queued(store, 1)
        assert not pending.done()
    assert (await pending).builds[0].name == "app-1"


async def test_a_call_cancelled_while_queued_writes_nothing(store: SqliteStore) -> None:
    await store.create_buildconfig(config("blocker"))
    await store.create_buildconfig(config("app"))
    async with writer_held(store):
        doomed = asyncio.create_task(store.instantiate([new_build("app")]))
        await wait_queued(store, 1)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
    (made,) = (await store.instantiate([new_build("app")])).builds
    assert made.name == "app-1"


async def test_close_writes_what_was_queued(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    await store.create_buildconfig(config("app"))
    tasks = [asyncio.create_task(store.instantiate([new_build("app")])) for _ in range(20)]
    await asyncio.sleep(0)  # let them all enqueue
    await store.close()
    assert sorted(t.result().builds[0].number for t in tasks) == list(range(1, 21))


async def test_no_sqlite_call_runs_on_the_event_loop_thread(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()
    real_connect = sqlite3.connect

    class Recording(sqlite3.Connection):
        def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
            threads.add(threading.get_ident())
            return super().execute(*args, **kwargs)

        def close(self) -> None:
            threads.add(threading.get_ident())
            super().close()

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        threads.add(threading.get_ident())
        return real_connect(*args, **kwargs, factory=Recording)

    monkeypatch.setattr(sqlite3, "connect", connect)
    store = SqliteStore(db_path)
    await store.open()
    await store.create_buildconfig(config("app"))
    await store.replace_buildconfig(config("app", labels={"a": "b"}))
    await asyncio.gather(*(store.instantiate([new_build("app")]) for _ in range(10)))
    await store.get_buildconfig("default", "app")
    await store.list_buildconfigs()
    page = await store.list_builds(BuildQuery(limit=3))
    await store.list_builds(BuildQuery(limit=3, continue_token=page.continue_token))
    build = await store.get_build("default", "app-1")
    await store.update_build(build)
    await store.delete_builds("default", ["app-2"])
    await store.prune_deliveries(metas.now())
    await store.delete_buildconfig("default", "app")
    await store.close()
    assert threads and threading.get_ident() not in threads
