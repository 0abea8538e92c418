"""The custom-resource store against the fake API server (two replicas = two clients)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests import factories
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.support.processes import async_wait_for
from triggerd import errors
from triggerd.kube import Kube, KubernetesSettings, connect
from triggerd.model import builds, requests
from triggerd.model.builds import Phase
from triggerd.store.base import BuildQuery, Delivery, NewBuild, Store
from triggerd.store.kubernetes import ConfigEvent, KubernetesStore

BCS = ("triggerd.dev/v1", "buildconfigs")
BUILDS = ("triggerd.dev/v1", "builds")


def new_build(name: str = "app", request: requests.BuildRequest | None = None) -> NewBuild:
    def make(config: object, number: int) -> builds.Build:
        from triggerd.model.buildconfigs import BuildConfig

        assert isinstance(config, BuildConfig)
        return requests.instantiate(
            config, request or requests.BuildRequest(), number=number, uid="", created=factories.T0
        )

    return NewBuild(namespace=NAMESPACE, config_name=name, make=make)


@pytest.fixture
def store(kube: Kube) -> KubernetesStore:
    return KubernetesStore(kube, NAMESPACE, secret_cache_seconds=0.3)


def test_implements_the_store_protocol(kube: Kube) -> None:
    implementation: Store = KubernetesStore(kube, NAMESPACE)  # checked by mypy
    assert implementation is not None


async def test_queue_summary_orders_configs_by_oldest_new_build(store: KubernetesStore) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    await store.create_buildconfig(factories.buildconfig("web", namespace=NAMESPACE))
    first = (await store.instantiate([new_build("web")])).builds[0]
    await store.instantiate([new_build("app"), new_build("web")])
    summary = await store.queue_summary()
    assert summary.total == 3
    assert summary.configs == ((NAMESPACE, "web"), (NAMESPACE, "app"))
    done = dataclasses.replace(first, status=dataclasses.replace(first.status, phase=Phase.RUNNING))
    await store.update_build(done)
    summary = await store.queue_summary()
    assert summary.total == 2


@pytest.fixture
async def other_store(kube_settings: KubernetesSettings) -> AsyncIterator[KubernetesStore]:
    """A second replica: its own client and connection pool."""
    kube = Kube(await connect(kube_settings))
    try:
        yield KubernetesStore(kube, NAMESPACE)
    finally:
        await kube.close()


async def test_buildconfig_round_trip(store: KubernetesStore, apiserver: FakeApiServer) -> None:
    config = factories.buildconfig("app", namespace=NAMESPACE)
    config = dataclasses.replace(config, last_version=7)  # an exported config keeps its count
    created = await store.create_buildconfig(config)
    assert created.meta.uid and created.meta.resource_version
    assert created.last_version == 7
    assert created.to_dict()["apiVersion"] == "build.openshift.io/v1"
    stored = apiserver.get(BCS, NAMESPACE, "app")
    assert stored is not None and stored["apiVersion"] == "triggerd.dev/v1"
    assert (await store.get_buildconfig(NAMESPACE, "app")).spec == created.spec
    assert [c.name for c in await store.list_buildconfigs()] == ["app"]
    with pytest.raises(errors.AlreadyExists):
        await store.create_buildconfig(config)
    with pytest.raises(errors.NotFound):
        await store.get_buildconfig(NAMESPACE, "nope")


async def test_replace_keeps_last_version_and_checks_versions(store: KubernetesStore) -> None:
    created = await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    await store.instantiate([new_build()])
    changed = factories.buildconfig("app", namespace=NAMESPACE, ref="develop")
    with pytest.raises(errors.Conflict):
        await store.replace_buildconfig(
            changed, expected_resource_version=created.meta.resource_version
        )
    replaced = await store.replace_buildconfig(changed)
    assert replaced.last_version == 1
    assert replaced.spec.source.git is not None and replaced.spec.source.git.ref == "develop"


async def test_instantiate_numbers_builds_and_update_writes_status(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    first = (await store.instantiate([new_build()])).builds[0]
    second = (await store.instantiate([new_build()])).builds[0]
    assert (first.name, second.name) == ("app-1", "app-2")
    assert first.phase is Phase.NEW and first.meta.uid
    doc = apiserver.get(BUILDS, NAMESPACE, "app-1")
    assert doc is not None and doc["metadata"]["ownerReferences"][0]["kind"] == "BuildConfig"
    assert doc["status"]["phase"] == "New"
    assert (await store.get_buildconfig(NAMESPACE, "app")).last_version == 2

    running = dataclasses.replace(
        first, status=dataclasses.replace(first.status, phase=Phase.RUNNING)
    )
    saved = await store.update_build(running, expected_resource_version=first.meta.resource_version)
    assert saved.phase is Phase.RUNNING
    with pytest.raises(errors.Conflict):
        await store.update_build(running, expected_resource_version=first.meta.resource_version)
    # without an expected version the latest write wins
    done = dataclasses.replace(
        first, status=dataclasses.replace(first.status, phase=Phase.COMPLETE)
    )
    assert (await store.update_build(done)).phase is Phase.COMPLETE

    page = await store.list_builds(BuildQuery(config_name="app", phases=frozenset({Phase.NEW})))
    assert [b.name for b in page.builds] == ["app-2"]
    page = await store.list_builds(BuildQuery(namespace=NAMESPACE, limit=1))
    assert [b.name for b in page.builds] == ["app-1"] and page.continue_token
    rest = await store.list_builds(
        BuildQuery(namespace=NAMESPACE, limit=1, continue_token=page.continue_token)
    )
    assert [b.name for b in rest.builds] == ["app-2"] and rest.continue_token is None
    assert set(apiserver.calls.patch_content_types) == {"application/merge-patch+json"}


async def test_label_selectors_reach_the_server(store: KubernetesStore) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    await store.create_buildconfig(factories.buildconfig("web", namespace=NAMESPACE))
    await store.instantiate([new_build("app"), new_build("web")])
    query = BuildQuery(label_in={builds.CONFIG_LABEL: frozenset({"web"})})
    assert [b.name for b in (await store.list_builds(query)).builds] == ["web-1"]
    query = BuildQuery(label_not_in={builds.CONFIG_LABEL: frozenset({"web"})})
    assert [b.name for b in (await store.list_builds(query)).builds] == ["app-1"]
    query = BuildQuery(label_absent=frozenset({builds.CONFIG_LABEL}))
    assert (await store.list_builds(query)).builds == ()


async def test_two_replicas_never_share_a_number(
    store: KubernetesStore, other_store: KubernetesStore
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))

    async def many(s: KubernetesStore) -> list[str]:
        return [(await s.instantiate([new_build()])).builds[0].name for _ in range(8)]

    a, b = await asyncio.gather(many(store), many(other_store))
    names = a + b
    assert len(set(names)) == 16
    assert sorted(int(n.rsplit("-", 1)[1]) for n in names) == list(range(1, 17))
    assert (await store.get_buildconfig(NAMESPACE, "app")).last_version == 16


async def test_a_taken_number_is_skipped(store: KubernetesStore, apiserver: FakeApiServer) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    # A Build applied by hand (or restored from a backup) that lastVersion does not count
    apiserver.put(
        BUILDS,
        {"apiVersion": "triggerd.dev/v1", "kind": "Build",
         "metadata": {"name": "app-1", "namespace": NAMESPACE}, "spec": {}},
    )  # fmt: skip
    made = (await store.instantiate([new_build()])).builds[0]
    assert made.name == "app-2"


async def test_deliveries_are_deduplicated_across_replicas(
    store: KubernetesStore, other_store: KubernetesStore
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    delivery = Delivery(key="github:72d3162e", received=factories.T0)
    a, b = await asyncio.gather(
        store.instantiate([new_build()], delivery=delivery),
        other_store.instantiate([new_build()], delivery=delivery),
    )
    assert sorted([a.duplicate, b.duplicate]) == [False, True]
    assert [x.name for x in a.builds] == [x.name for x in b.builds] == ["app-1"]
    again = await store.instantiate([new_build()], delivery=delivery)
    assert again.duplicate and [x.name for x in again.builds] == ["app-1"]
    assert (await store.get_buildconfig(NAMESPACE, "app")).last_version == 1

    assert await store.prune_deliveries(factories.T0 - timedelta(seconds=1)) == 0
    assert await store.prune_deliveries(factories.T0 + timedelta(seconds=1)) == 1
    fresh = await store.instantiate([new_build()], delivery=delivery)
    assert not fresh.duplicate and fresh.builds[0].name == "app-2"


async def test_failed_instantiation_releases_the_delivery(store: KubernetesStore) -> None:
    delivery = Delivery(key="gitlab:1", received=factories.T0)
    with pytest.raises(errors.NotFound):
        await store.instantiate([new_build("missing")], delivery=delivery)
    await store.create_buildconfig(factories.buildconfig("missing", namespace=NAMESPACE))
    retried = await store.instantiate([new_build("missing")], delivery=delivery)
    assert not retried.duplicate and [b.name for b in retried.builds] == ["missing-1"]


async def test_delete_buildconfig_cascades(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    await store.instantiate([new_build(), new_build()])
    await store.delete_buildconfig(NAMESPACE, "app")
    assert apiserver.list(BUILDS, NAMESPACE) == []
    with pytest.raises(errors.NotFound):
        await store.delete_buildconfig(NAMESPACE, "app")


async def test_webhook_secret_from_a_secret_with_a_short_cache(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    def put_secret(value: str) -> None:
        apiserver.put(
            ("v1", "secrets"),
            {"metadata": {"name": "hook", "namespace": NAMESPACE}, "type": "Opaque",
             "data": {"WebHookSecretKey": base64.b64encode(value.encode()).decode()}},
        )  # fmt: skip

    assert await store.secret_value(NAMESPACE, "hook") is None
    put_secret("s3cret")
    await async_wait_for(
        lambda: store.secret_value(NAMESPACE, "hook"), timeout=5, what="secret after cache"
    )
    assert await store.secret_value(NAMESPACE, "hook") == "s3cret"
    put_secret("rotated")
    assert await store.secret_value(NAMESPACE, "hook") == "s3cret"  # cached
    await async_wait_for(
        lambda: _equals(store.secret_value(NAMESPACE, "hook"), "rotated"),
        timeout=5,
        what="rotation seen",
    )
    assert await store.secret_value(NAMESPACE, "hook", "other") is None
    assert store.cached_secret("hook") == "rotated"
    assert store.cached_secret("never-read") is None
    put_secret("third")
    await async_wait_for(
        lambda: _refreshed(store, "third"), timeout=5, what="refresh_secrets sees rotation"
    )


async def _refreshed(store: KubernetesStore, wanted: str) -> bool:
    await store.refresh_secrets(["hook", "missing-secret"])
    return store.cached_secret("hook") == wanted


async def _equals(value: asyncio.Future[str | None] | object, wanted: str) -> bool:
    assert asyncio.iscoroutine(value)
    return bool(await value == wanted)


async def test_kubectl_apply_is_seen_through_the_watch(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    seen: list[ConfigEvent] = []

    async def consume() -> None:
        async for event in store.watch_buildconfigs(timeout_seconds=1):
            seen.append(event)

    task = asyncio.create_task(consume())
    try:
        await async_wait_for(lambda: seen, timeout=5, what="initial list")
        assert (seen[0].type, seen[0].name) == ("ADDED", "app")
        applied = factories.buildconfig_doc("web", namespace=NAMESPACE)
        applied["apiVersion"] = "triggerd.dev/v1"
        apiserver.put(BCS, applied)  # what `kubectl apply -f web.yaml` does
        await async_wait_for(lambda: len(seen) >= 2, timeout=5, what="web added")
        assert (seen[1].type, seen[1].name) == ("ADDED", "web")
        assert seen[1].config is not None and seen[1].config.name == "web"
        apiserver.compact()
        apiserver.remove(BCS, NAMESPACE, "app")
        await async_wait_for(
            lambda: any(e.type == "DELETED" for e in seen), timeout=5, what="app deleted"
        )
        deleted = [e for e in seen if e.type == "DELETED"]
        assert [e.name for e in deleted] == ["app"]
        assert deleted[0].config is not None and deleted[0].config.name == "app"
        assert apiserver.calls.gone >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_open_explains_missing_crds(kube: Kube, apiserver: FakeApiServer) -> None:
    await KubernetesStore(kube, NAMESPACE).open()
    apiserver.unserved.add(("triggerd.dev/v1", "deliveries"))
    with pytest.raises(errors.PermanentError, match=r"deliveries\.triggerd\.dev"):
        await KubernetesStore(kube, NAMESPACE).open()


async def test_binary_inputs_in_use_come_from_build_annotations(store: KubernetesStore) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    used, gone = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    binary = requests.BuildRequest(annotations={builds.BINARY_INPUT_ANNOTATION: used})
    await store.instantiate([new_build(request=binary), new_build()])
    assert await store.binary_inputs_in_use({used, gone}) == {used}
    assert await store.binary_inputs_in_use(set()) == set()


async def test_a_delivery_claim_taken_anew_meanwhile_is_not_overwritten(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    """The claim this replica made is pruned and claimed by another delivery handler while
    this one creates its builds: the completion (with a precondition) must not write this
    call's builds into the other's claim."""
    from triggerd.store.kubernetes import delivery_name

    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    delivery = Delivery(key="github:raced", received=factories.T0)
    claim = delivery_name(delivery.key)
    deliveries = ("triggerd.dev/v1", "deliveries")
    plain = new_build()

    def make(config: object, number: int) -> builds.Build:
        # another replica pruned the claim and claimed the same id again, right now
        theirs = apiserver.get(deliveries, NAMESPACE, claim)
        assert theirs is not None
        apiserver.remove(deliveries, NAMESPACE, claim)
        theirs["metadata"].pop("resourceVersion", None)
        theirs["spec"] = {"key": delivery.key, "builds": [], "complete": False, "other": True}
        apiserver.put(deliveries, theirs)
        return plain.make(config, number)  # type: ignore[arg-type]

    made = await store.instantiate(
        [NewBuild(namespace=NAMESPACE, config_name="app", make=make)], delivery=delivery
    )
    assert [b.name for b in made.builds] == ["app-1"]
    stored = apiserver.get(deliveries, NAMESPACE, claim)
    assert stored is not None and stored["spec"] == {
        "key": delivery.key,
        "builds": [],
        "complete": False,
        "other": True,
    }


async def test_a_refused_first_build_takes_no_number(store: KubernetesStore) -> None:
    """A factory that refuses (the first build exists already) leaves lastVersion alone,
    as the SQLite transaction does."""
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))

    def refuse(config: object, number: int) -> builds.Build:
        raise errors.Conflict("first build exists")

    with pytest.raises(errors.Conflict):
        await store.instantiate([NewBuild(namespace=NAMESPACE, config_name="app", make=refuse)])
    assert (await store.get_buildconfig(NAMESPACE, "app")).last_version == 0
    made = await store.instantiate([new_build()])
    assert made.builds[0].name == "app-1"


async def test_unparseable_configs_are_reported_when_asked(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    broken = factories.buildconfig_doc("broken", namespace=NAMESPACE)
    broken["apiVersion"] = "triggerd.dev/v1"
    broken["spec"]["runPolicy"] = "Sometimes"
    apiserver.put(BCS, broken)
    seen: list[ConfigEvent] = []

    async def consume() -> None:
        async for event in store.watch_buildconfigs(timeout_seconds=1, include_invalid=True):
            seen.append(event)

    task = asyncio.create_task(consume())
    try:
        await async_wait_for(lambda: seen, timeout=5, what="the broken config")
        assert seen[0].config is None and seen[0].name == "broken"
        assert "spec.runPolicy" in seen[0].problem
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [c.name for c in await store.list_buildconfigs()] == []


async def test_report_buildconfig_writes_the_condition_only_when_it_changes(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    assert not await store.report_buildconfig(NAMESPACE, "app", None)  # nothing to clear
    assert await store.report_buildconfig(NAMESPACE, "app", "spec.x: bad")
    assert not await store.report_buildconfig(NAMESPACE, "app", "spec.x: bad")
    doc = apiserver.get(BCS, NAMESPACE, "app")
    assert doc is not None
    (condition,) = doc["status"]["conditions"]
    assert condition["type"] == "Valid" and condition["status"] == "False"
    assert condition["message"] == "spec.x: bad" and not doc["status"].get("lastVersion")
    # the numbering still works beside it, and the condition stays
    await store.instantiate([new_build()])
    assert await store.report_buildconfig(NAMESPACE, "app", None)
    doc = apiserver.get(BCS, NAMESPACE, "app")
    assert doc is not None and "conditions" not in doc["status"]
    assert doc["status"]["lastVersion"] == 1
    assert not await store.report_buildconfig(NAMESPACE, "missing", "whatever")
