"""KubernetesStore.delivered against the fake API server: the read a webhook's skip path
makes to recognise a redelivery, including one another replica is still completing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
from pytest_aiohttp import AiohttpClient

from tests import factories
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_replicas import (  # make_node: the replica fixture, reused
    HOOK_SECRET,
    PUSH,
    Node,
    github_hook_config,
    make_node,
)
from tests.kubernetes.test_store import new_build
from tests.support.processes import async_wait_for
from triggerd import errors
from triggerd.intake import signatures
from triggerd.kube import Kube
from triggerd.model.builds import Phase
from triggerd.store import kubernetes as kubernetes_store
from triggerd.store.base import BuildQuery, Delivery
from triggerd.store.kubernetes import KubernetesStore, delivery_name

DELIVERIES = ("triggerd.dev/v1", "deliveries")
__all__ = ["make_node"]  # a fixture: imported for pytest, not called here


@pytest.fixture
def store(kube: Kube) -> KubernetesStore:
    return KubernetesStore(kube, NAMESPACE)


async def test_an_unknown_delivery_is_none(store: KubernetesStore) -> None:
    assert await store.delivered("github:never") is None


async def test_a_recorded_delivery_answers_its_builds_as_they_are_now(
    store: KubernetesStore,
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    delivery = Delivery(key="github:d", received=factories.T0)
    first = await store.instantiate([new_build(), new_build()], delivery=delivery)
    build = first.builds[0]
    await store.update_build(
        dataclasses.replace(build, status=dataclasses.replace(build.status, phase=Phase.RUNNING))
    )
    found = await store.delivered("github:d")
    assert found is not None
    assert [(b.name, b.phase) for b in found] == [("app-1", Phase.RUNNING), ("app-2", Phase.NEW)]
    assert (await store.get_buildconfig(NAMESPACE, "app")).last_version == 2
    await store.delete_builds(NAMESPACE, ["app-1"])
    pruned = await store.delivered("github:d")
    assert pruned is not None and [b.name for b in pruned] == ["app-2"]


async def test_a_claim_being_completed_is_waited_for(
    store: KubernetesStore, apiserver: FakeApiServer
) -> None:
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    (made,) = (await store.instantiate([new_build()])).builds
    claim = delivery_name("github:inflight")
    # Another replica claimed the delivery and is creating its builds right now.
    apiserver.put(
        DELIVERIES,
        {"metadata": {"name": claim, "namespace": NAMESPACE},
         "spec": {"key": "github:inflight", "builds": [], "complete": False}},
    )  # fmt: skip
    lookup = asyncio.create_task(store.delivered("github:inflight"))
    # The lookup reads the incomplete claim twice, i.e. it waits rather than answering.
    await async_wait_for(
        lambda: sum(path.endswith(claim) for path in apiserver.calls.gets) >= 2 or None,
        timeout=5,
        what="the lookup polling the incomplete claim",
    )
    assert not lookup.done()
    apiserver.put(
        DELIVERIES,
        {"metadata": {"name": claim, "namespace": NAMESPACE},
         "spec": {"key": "github:inflight", "builds": [f"{NAMESPACE}/{made.name}"],
                  "complete": True}},
    )  # fmt: skip
    found = await asyncio.wait_for(lookup, 5)
    assert found is not None and [b.name for b in found] == ["app-1"]


async def test_a_claim_never_completed_is_a_temporary_error(
    store: KubernetesStore, apiserver: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes_store, "CLAIM_WAIT_SECONDS", 0.3)
    apiserver.put(
        DELIVERIES,
        {"metadata": {"name": delivery_name("github:stuck"), "namespace": NAMESPACE},
         "spec": {"key": "github:stuck", "builds": [], "complete": False}},
    )  # fmt: skip
    with pytest.raises(errors.TemporaryError):
        await store.delivered("github:stuck")


async def test_a_redelivery_after_the_ref_changed_answers_the_original_builds_over_http(
    make_node: Callable[..., Awaitable[Node]],
    apiserver: FakeApiServer,
    aiohttp_client: AiohttpClient,
) -> None:
    """The webhook skip path on the Kubernetes store: GitHub's "Redeliver" of a push that
    built, after the config's ref changed, answers with the original build."""
    doc = github_hook_config(apiserver)
    node = await make_node("a", aiohttp_client=aiohttp_client)
    assert node.client is not None
    await node.engine.create_buildconfig(doc, namespace=NAMESPACE)
    await async_wait_for(
        lambda: node.engine.named_secret("github-hook") == HOOK_SECRET, timeout=5, what="secret"
    )
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "same",
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signatures.sign_github(PUSH, HOOK_SECRET),
    }
    first = await node.client.post("/hooks/github", data=PUSH, headers=headers)
    assert first.status == 201, await first.text()
    first_body = await first.json()
    assert [t["name"] for t in first_body["triggered"]] == ["hello-1"]

    changed = (await node.store.get_buildconfig(NAMESPACE, "hello")).to_dict()
    changed["spec"]["source"]["git"]["ref"] = "release"
    await node.engine.replace_buildconfig(changed, namespace=NAMESPACE, name="hello")
    again = await node.client.post("/hooks/github", data=PUSH, headers=headers)
    assert again.status == 200, await again.text()
    body = await again.json()
    assert body["duplicate"] is True
    assert body["triggered"] == first_body["triggered"]
    page = await node.store.list_builds(BuildQuery(namespace=NAMESPACE))
    assert [b.name for b in page.builds] == ["hello-1"]
