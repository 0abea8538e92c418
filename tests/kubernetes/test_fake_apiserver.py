"""The fake API server itself, driven by kubernetes_asyncio's generated clients: if the fake
drifted from the protocol, the tests built on it would prove nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, watch

from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from triggerd.kube import Kube, KubernetesSettings, connect

GROUP, VERSION = "triggerd.dev", "v1"


@pytest.fixture
async def api(kube_settings: KubernetesSettings) -> AsyncIterator[Any]:
    api_client = await connect(kube_settings)
    try:
        yield api_client
    finally:
        await api_client.close()


def bc(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BuildConfig",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"runPolicy": "Serial"},
        "status": {"lastVersion": 9},
    }


async def test_crud_status_codes_and_subresource(api: Any) -> None:
    objects: Any = client.CustomObjectsApi(api)
    args = (GROUP, VERSION, NAMESPACE, "buildconfigs")
    created = await objects.create_namespaced_custom_object(*args, bc("a"))
    assert "status" not in created  # the status subresource ignores status on create
    with pytest.raises(client.ApiException) as e409:
        await objects.create_namespaced_custom_object(*args, bc("a"))
    assert (
        e409.value.status == 409
        and json.loads(e409.value.body or b"{}")["reason"] == "AlreadyExists"
    )
    with pytest.raises(client.ApiException) as e422:
        await objects.create_namespaced_custom_object(*args, bc("Not_Valid"))
    assert e422.value.status == 422 and json.loads(e422.value.body or b"{}")["kind"] == "Status"
    with pytest.raises(client.ApiException) as e404:
        await objects.get_namespaced_custom_object(*args, "missing")
    assert e404.value.status == 404

    rv = created["metadata"]["resourceVersion"]
    status_patch = {"metadata": {"resourceVersion": rv}, "status": {"lastVersion": 1}}
    patched = await objects.patch_namespaced_custom_object_status(
        *args, "a", status_patch, _content_type="application/merge-patch+json"
    )
    assert patched["status"] == {"lastVersion": 1}
    with pytest.raises(client.ApiException) as stale:  # same precondition again: stale
        await objects.patch_namespaced_custom_object_status(
            *args, "a", status_patch, _content_type="application/merge-patch+json"
        )
    assert stale.value.status == 409
    # a write to the main resource keeps status as it is
    body = {**patched, "spec": {"runPolicy": "Parallel"}, "status": {"lastVersion": 99}}
    replaced = await objects.replace_namespaced_custom_object(*args, "a", body)
    assert replaced["spec"]["runPolicy"] == "Parallel"
    assert replaced["status"] == {"lastVersion": 1}


async def test_json_patch_is_refused(api: Any, apiserver: FakeApiServer) -> None:
    objects: Any = client.CustomObjectsApi(api)
    args = (GROUP, VERSION, NAMESPACE, "buildconfigs")
    await objects.create_namespaced_custom_object(*args, bc("a"))
    # kubernetes_asyncio picks json-patch for a dict body unless told otherwise (the trap)
    with pytest.raises(client.ApiException) as e:
        await objects.patch_namespaced_custom_object(*args, "a", {"spec": {}})
    assert e.value.status == 415
    assert apiserver.calls.patch_content_types[-1].startswith("application/json-patch+json")


async def test_label_selectors(api: Any) -> None:
    objects: Any = client.CustomObjectsApi(api)
    args = (GROUP, VERSION, NAMESPACE, "buildconfigs")
    await objects.create_namespaced_custom_object(*args, bc("a", team="x", tier="web"))
    await objects.create_namespaced_custom_object(*args, bc("b", team="y"))
    await objects.create_namespaced_custom_object(*args, bc("c"))

    async def names(selector: str) -> list[str]:
        listed = await objects.list_namespaced_custom_object(*args, label_selector=selector)
        return [i["metadata"]["name"] for i in listed["items"]]

    assert await names("team=x") == ["a"]
    assert await names("team!=x") == ["b", "c"]
    assert await names("team in (x,y)") == ["a", "b"]
    assert await names("team notin (x)") == ["b", "c"]
    assert await names("!team") == ["c"]
    assert await names("team,tier") == ["a"]


async def test_watch_with_the_generated_client(api: Any, apiserver: FakeApiServer) -> None:
    batch: Any = client.BatchV1Api(api)
    listed = await batch.list_namespaced_job(NAMESPACE)
    rv = listed.metadata.resource_version

    async def later() -> None:
        await asyncio.sleep(0.05)
        apiserver.put(("batch/v1", "jobs"), {"metadata": {"name": "j", "namespace": NAMESPACE},
                                             "spec": {"template": {}}})  # fmt: skip
        apiserver.remove(("batch/v1", "jobs"), NAMESPACE, "j")

    task = asyncio.create_task(later())
    seen: list[str] = []
    async with watch.Watch().stream(
        batch.list_namespaced_job, NAMESPACE, resource_version=rv, timeout_seconds=1
    ) as stream:
        async for event in stream:
            seen.append(event["type"])
            if len(seen) == 2:
                break
    await task
    assert seen == ["ADDED", "DELETED"]


async def test_watch_ends_after_timeout_and_expires(kube: Kube, apiserver: FakeApiServer) -> None:
    path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    listed = await kube.list(path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = [e async for e in kube.watch(
        path, resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=1
    )]  # fmt: skip
    assert events == [] and 0.9 <= loop.time() - started < 5
    apiserver.compact()
    from triggerd.kube import WatchExpired

    with pytest.raises(WatchExpired):
        async for _ in kube.watch(path, resource_version=listed["metadata"]["resourceVersion"]):
            pass


async def test_kube_connects_lazily_from_settings(
    kube_settings: KubernetesSettings, apiserver: FakeApiServer
) -> None:
    lazy = Kube(settings=kube_settings)
    assert lazy.api is None
    try:
        listed = await lazy.list(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
        assert listed["items"] == [] and lazy.api is not None
    finally:
        await lazy.close()
    with pytest.raises(ValueError, match="ApiClient or the settings"):
        Kube()
