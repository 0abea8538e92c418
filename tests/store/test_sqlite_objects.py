"""SqliteStore: BuildConfig and Build round trips, versions, conflicts, deletes, deliveries."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tests.store.helpers import T0, config, config_doc, delivery, factory, new_build
from triggerd.errors import AlreadyExists, Conflict, NotFound
from triggerd.model import buildconfigs, builds, requests
from triggerd.model.builds import Phase
from triggerd.store.base import BuildQuery, Store
from triggerd.store.sqlite import SqliteStore

EXPORT = Path(__file__).parents[2] / "config" / "examples" / "openshift-export.yaml"


def test_sqlite_store_is_a_store(db_path: Path) -> None:
    # mypy checks the assignment against the Protocol; the asserts keep pytest honest.
    store: Store = SqliteStore(db_path)
    assert isinstance(store, SqliteStore)


async def test_openshift_export_round_trips_with_unknown_fields(
    store: SqliteStore, db_path: Path
) -> None:
    doc = yaml.safe_load(EXPORT.read_text())
    created = await store.create_buildconfig(buildconfigs.parse(doc))

    # The server fields are the store's: a new uid, its resourceVersion, a fresh timestamp.
    assert created.meta.uid and created.meta.uid != doc["metadata"]["uid"]
    assert created.meta.resource_version == "1"
    assert created.meta.creation_timestamp is not None
    # An exported config keeps its build count.
    assert created.last_version == 7

    loaded = await store.get_buildconfig("team-a", "ruby-hello-world")
    assert loaded == created
    out = loaded.to_dict()
    assert out["spec"] == doc["spec"]  # postCommit, resources, nodeSelector: null, ...
    assert out["metadata"]["labels"] == doc["metadata"]["labels"]
    assert out["metadata"]["annotations"] == doc["metadata"]["annotations"]
    assert "managedFields" not in out["metadata"]
    assert "generation" not in out["metadata"]
    assert out["status"] == {"lastVersion": 7}

    # What is on disk is the API document, and a fresh process reads the same object.
    with sqlite3.connect(db_path) as raw:
        stored = json.loads(raw.execute("SELECT doc FROM buildconfigs").fetchone()[0])
    assert stored == out
    await store.close()
    again = SqliteStore(db_path)
    await again.open()
    try:
        assert await again.get_buildconfig("team-a", "ruby-hello-world") == created
    finally:
        await again.close()


async def test_create_twice_is_already_exists(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    with pytest.raises(AlreadyExists) as info:
        await store.create_buildconfig(config("app"))
    assert info.value.kind == "BuildConfig" and info.value.name == "app"
    # The same name in another namespace is another object.
    other = await store.create_buildconfig(config("app", "team-b"))
    assert other.namespace == "team-b"


async def test_get_and_list_buildconfigs(store: SqliteStore) -> None:
    for namespace, name in [("b", "two"), ("a", "zeta"), ("b", "one"), ("a", "alpha")]:
        await store.create_buildconfig(config(name, namespace))
    everything = await store.list_buildconfigs()
    assert [(c.namespace, c.name) for c in everything] == [
        ("a", "alpha"),
        ("a", "zeta"),
        ("b", "one"),
        ("b", "two"),
    ]
    assert [c.name for c in await store.list_buildconfigs("b")] == ["one", "two"]
    assert await store.list_buildconfigs("nobody") == []
    with pytest.raises(NotFound) as info:
        await store.get_buildconfig("a", "one")
    assert info.value.kind == "BuildConfig" and info.value.name == "one"


async def test_replace_keeps_server_fields_and_bumps_version(store: SqliteStore) -> None:
    created = await store.create_buildconfig(config("app"))
    await store.instantiate([new_build("app")])
    edited_doc = config_doc("app", labels={"team": "blue"}, runPolicy="Parallel")
    # A client may send stale or made-up server fields; they are ignored.
    edited_doc["metadata"]["uid"] = "forged"
    edited_doc["status"] = {"lastVersion": 0}
    replaced = await store.replace_buildconfig(
        buildconfigs.parse(edited_doc), expected_resource_version="2"
    )
    assert replaced.meta.uid == created.meta.uid
    assert replaced.meta.creation_timestamp == created.meta.creation_timestamp
    assert replaced.last_version == 1
    assert replaced.meta.resource_version == "3"
    assert replaced.run_policy is buildconfigs.RunPolicy.PARALLEL
    assert replaced.meta.labels == {"team": "blue"}
    assert await store.get_buildconfig("default", "app") == replaced
    # Numbering carries on from the stored lastVersion.
    result = await store.instantiate([new_build("app")])
    assert [b.number for b in result.builds] == [2]


async def test_replace_with_stale_version_is_conflict(store: SqliteStore) -> None:
    created = await store.create_buildconfig(config("app"))
    await store.replace_buildconfig(
        config("app", labels={"v": "1"}), expected_resource_version=created.meta.resource_version
    )
    with pytest.raises(Conflict, match="has been modified"):
        await store.replace_buildconfig(
            config("app", labels={"v": "2"}),
            expected_resource_version=created.meta.resource_version,
        )
    assert (await store.get_buildconfig("default", "app")).meta.labels == {"v": "1"}
    # Without a precondition the last writer wins.
    last = await store.replace_buildconfig(config("app", labels={"v": "3"}))
    assert last.meta.labels == {"v": "3"}


async def test_replace_absent_is_not_found(store: SqliteStore) -> None:
    with pytest.raises(NotFound):
        await store.replace_buildconfig(config("ghost"))


async def test_delete_buildconfig_cascades_to_its_builds_only(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    await store.create_buildconfig(config("other"))
    await store.instantiate([new_build("app"), new_build("app"), new_build("other")])
    await store.delete_buildconfig("default", "app")
    with pytest.raises(NotFound):
        await store.get_buildconfig("default", "app")
    with pytest.raises(NotFound):
        await store.get_build("default", "app-1")
    page = await store.list_builds(BuildQuery(namespace="default"))
    assert [b.name for b in page.builds] == ["other-1"]
    remaining = await store.get_build("default", "other-1")
    assert remaining.config_name == "other"
    with pytest.raises(NotFound):
        await store.delete_buildconfig("default", "app")
    # A config created again under the old name starts from scratch.
    await store.create_buildconfig(config("app"))
    result = await store.instantiate([new_build("app")])
    assert result.builds[0].name == "app-1"


async def test_update_build_stores_status_and_checks_versions(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    (made,) = (await store.instantiate([new_build("app")])).builds
    running = replace(
        made,
        status=replace(made.status, phase=Phase.RUNNING, start_timestamp=T0),
        # Server fields from the caller are ignored.
        meta=replace(made.meta, uid="forged", creation_timestamp=T0),
    )
    saved = await store.update_build(running, expected_resource_version=made.meta.resource_version)
    assert saved.phase is Phase.RUNNING
    assert saved.status.start_timestamp == T0
    assert saved.meta.uid == made.meta.uid
    assert saved.meta.creation_timestamp == made.meta.creation_timestamp
    assert int(saved.meta.resource_version) > int(made.meta.resource_version)
    assert await store.get_build("default", "app-1") == saved

    with pytest.raises(Conflict):
        await store.update_build(saved, expected_resource_version=made.meta.resource_version)
    with pytest.raises(NotFound):
        await store.update_build(replace(saved, meta=replace(saved.meta, name="app-9")))


async def test_delete_builds_ignores_absent_names(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    await store.instantiate([new_build("app") for _ in range(3)])
    await store.delete_builds("default", ["app-1", "app-3", "app-404"])
    await store.delete_builds("other-namespace", ["app-2"])
    await store.delete_builds("default", [])
    with pytest.raises(NotFound):
        await store.get_build("default", "app-1")
    assert (await store.get_build("default", "app-2")).number == 2
    with pytest.raises(NotFound):
        await store.get_build("default", "app-3")


async def test_resource_versions_come_from_one_monotonic_counter(
    store: SqliteStore, db_path: Path
) -> None:
    a = await store.create_buildconfig(config("a"))
    b = await store.create_buildconfig(config("b"))
    (build,) = (await store.instantiate([new_build("a")])).builds
    versions = [int(a.meta.resource_version), int(b.meta.resource_version)]
    versions.append(int(build.meta.resource_version))
    assert versions == sorted(versions) and len(set(versions)) == 3
    # The config written in the same write shares the build's version, as in one etcd txn.
    assert (await store.get_buildconfig("default", "a")).meta.resource_version == str(versions[2])
    page = await store.list_builds(BuildQuery())
    assert int(page.resource_version) == versions[2]
    await store.close()
    # After a restart the counter carries on; it never goes back.
    again = SqliteStore(db_path)
    await again.open()
    try:
        c = await again.create_buildconfig(config("c"))
        assert int(c.meta.resource_version) > versions[2]
    finally:
        await again.close()


async def test_build_documents_are_the_api_form(store: SqliteStore, db_path: Path) -> None:
    await store.create_buildconfig(config("app"))
    request = requests.BuildRequest(
        labels={"team": "blue"}, triggered_by=({"message": "GitHub WebHook"},)
    )
    made = (
        await store.instantiate([new_build("app", make=factory(request, uid="fixed-uid"))])
    ).builds[0]
    assert made.meta.uid == "fixed-uid"
    with sqlite3.connect(db_path) as raw:
        row = raw.execute(
            "SELECT namespace, name, config_name, number, phase, uid, resource_version, labels,"
            " doc FROM builds"
        ).fetchone()
    namespace, name, config_name, number, phase, uid, rv, labels, doc = row
    assert (namespace, name, config_name, number, phase, uid) == (
        "default",
        "app-1",
        "app",
        1,
        "New",
        "fixed-uid",
    )
    assert str(rv) == made.meta.resource_version
    assert json.loads(labels)["team"] == "blue"
    assert json.loads(doc) == made.to_dict()
    assert builds.from_dict(json.loads(doc)) == made


async def test_prune_deliveries_forgets_old_keys(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    await store.instantiate([new_build("app")], delivery=delivery("old", T0))
    await store.instantiate([new_build("app")], delivery=delivery("new", T0 + timedelta(hours=2)))
    assert await store.prune_deliveries(T0 + timedelta(hours=1)) == 1
    assert await store.prune_deliveries(T0 + timedelta(hours=1)) == 0
    # A forgotten key creates again; a remembered one does not.
    again = await store.instantiate([new_build("app")], delivery=delivery("old"))
    assert not again.duplicate and again.builds[0].number == 3
    kept = await store.instantiate([new_build("app")], delivery=delivery("new"))
    assert kept.duplicate and [b.number for b in kept.builds] == [2]


async def test_calls_before_open_or_after_close_fail_clearly(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_buildconfig("default", "app")
    await store.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await store.create_buildconfig(config("app"))


async def test_writes_by_another_process_are_noticed(store: SqliteStore, db_path: Path) -> None:
    await store.create_buildconfig(config("app"))
    await store.instantiate([new_build("app")])
    # An admin tool bumps the counter and the config behind the server's back.
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE counter SET value = 100")
        raw.execute(
            "UPDATE buildconfigs SET resource_version = 100, last_version = 50,"
            " doc = json_set(doc, '$.metadata.resourceVersion', '100', '$.status.lastVersion', 50)"
        )
    (made,) = (await store.instantiate([new_build("app")])).builds
    assert made.number == 51
    assert made.meta.resource_version == "101"


async def test_binary_inputs_in_use_are_found_through_their_index(
    store: SqliteStore, tmp_path: Path
) -> None:
    await store.create_buildconfig(config("app"))
    await store.create_buildconfig(config("other", namespace="team"))
    used, shared, gone = ("sha256:" + c * 64 for c in "abc")

    def binary(digest: str) -> requests.BuildRequest:
        return requests.BuildRequest(annotations={builds.BINARY_INPUT_ANNOTATION: digest})

    await store.instantiate([new_build("app", make=factory(binary(used)))])
    made = await store.instantiate([new_build("app", make=factory(binary(gone)))])
    # The same content uploaded in another namespace keeps the upload in use for both.
    await store.instantiate([new_build("other", "team", make=factory(binary(shared)))])
    await store.instantiate([new_build("app", make=factory(binary(shared)))])
    await store.instantiate([new_build("app")])  # not a binary build
    await store.delete_builds("default", [made.builds[0].name])
    assert await store.binary_inputs_in_use({used, shared, gone}) == {used, shared}
    assert await store.binary_inputs_in_use(set()) == set()
    # A phase change rewrites the document; the build still names its upload.
    first = await store.get_build("default", "app-1")
    await store.update_build(replace(first, status=replace(first.status, phase=Phase.RUNNING)))
    assert await store.binary_inputs_in_use({used}) == {used}
    # The lookup reads the partial index, not every stored document.
    key = builds.BINARY_INPUT_ANNOTATION
    sql = (  # the store's own query, spelled out; constants only
        f"EXPLAIN QUERY PLAN SELECT 1 FROM builds WHERE instr(doc, '\"{key}\"') > 0"  # noqa: S608
        f" AND json_extract(doc, '$.metadata.annotations.\"{key}\"') IN (?)"
    )
    conn = sqlite3.connect(store.path)
    try:
        plan = " ".join(str(row[-1]) for row in conn.execute(sql, (used,)))
    finally:
        conn.close()
    assert "builds_by_binary_input" in plan
