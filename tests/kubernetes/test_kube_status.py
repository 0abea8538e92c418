"""The custom-resource helpers of :mod:`triggerd.kube` against the fake API server: the
CRD check both stores open with, and the read → compare → precondition patch → retry loop
of their status writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from triggerd import errors
from triggerd.images.streams_kubernetes import KubernetesStreamsStore
from triggerd.kube import (
    Kube,
    path_for,
    require_custom_resources,
    status_patch,
    update_status,
)
from triggerd.store.kubernetes import KubernetesStore

CONFIGS = ("triggerd.dev/v1", "buildconfigs")
PATH = path_for("triggerd.dev/v1", "buildconfigs", NAMESPACE, "app")


def put_config(apiserver: FakeApiServer, **status: Any) -> None:
    apiserver.put(
        CONFIGS,
        {"metadata": {"name": "app", "namespace": NAMESPACE}, "spec": {}, "status": status},
    )


def stored_status(apiserver: FakeApiServer) -> dict[str, Any]:
    doc = apiserver.get(CONFIGS, NAMESPACE, "app")
    assert doc is not None
    return dict(doc.get("status") or {})


def test_status_patch_carries_the_version_read() -> None:
    doc = {"metadata": {"name": "x", "resourceVersion": "7"}, "status": {"a": 1}}
    assert status_patch(doc, {"b": None}) == {
        "metadata": {"resourceVersion": "7"},
        "status": {"b": None},
    }


async def test_a_change_is_merged_into_the_status(kube: Kube, apiserver: FakeApiServer) -> None:
    put_config(apiserver, lastVersion=3)
    seen: list[Mapping[str, Any]] = []

    def change(doc: Mapping[str, Any]) -> dict[str, Any] | None:
        seen.append(doc)
        return {"note": "x"}

    wrote = await update_status(kube, PATH, change, kind="BuildConfig", name="app", attempts=3)
    assert wrote is True
    assert stored_status(apiserver) == {"lastVersion": 3, "note": "x"}
    assert len(seen) == 1 and seen[0]["metadata"]["name"] == "app"


async def test_no_change_and_a_gone_object_write_nothing(
    kube: Kube, apiserver: FakeApiServer
) -> None:
    assert not await update_status(
        kube, PATH, lambda doc: {"note": "x"}, kind="BuildConfig", name="app", attempts=3
    )
    put_config(apiserver, lastVersion=3)
    before = apiserver.get(CONFIGS, NAMESPACE, "app")
    assert not await update_status(
        kube, PATH, lambda doc: None, kind="BuildConfig", name="app", attempts=3
    )
    assert apiserver.get(CONFIGS, NAMESPACE, "app") == before


async def test_a_write_lost_to_another_is_computed_again_on_the_new_state(
    kube: Kube, apiserver: FakeApiServer
) -> None:
    put_config(apiserver, lastVersion=3)
    pauses: list[int] = []

    def change(doc: Mapping[str, Any]) -> dict[str, Any] | None:
        status = doc.get("status") or {}
        if status.get("lastVersion") == 3:
            put_config(apiserver, lastVersion=4)  # another replica's bump, after our read
        return {"seen": status.get("lastVersion")}

    async def pause(attempt: int) -> None:
        pauses.append(attempt)

    wrote = await update_status(
        kube, PATH, change, kind="BuildConfig", name="app", attempts=3, after_conflict=pause
    )
    assert wrote is True
    assert stored_status(apiserver) == {"lastVersion": 4, "seen": 4}
    assert pauses == [0]


async def test_losing_every_race_is_a_temporary_error(kube: Kube, apiserver: FakeApiServer) -> None:
    put_config(apiserver, lastVersion=1)
    calls: list[int] = []

    def change(doc: Mapping[str, Any]) -> dict[str, Any] | None:
        calls.append(1)
        put_config(apiserver, lastVersion=len(calls) + 1)
        return {"note": "x"}

    with pytest.raises(errors.TemporaryError, match="BuildConfig 'app' keeps changing"):
        await update_status(kube, PATH, change, kind="BuildConfig", name="app", attempts=3)
    assert len(calls) == 3
    assert "note" not in stored_status(apiserver)


async def test_other_api_errors_are_domain_errors(kube: Kube, apiserver: FakeApiServer) -> None:
    put_config(apiserver)
    apiserver.forbidden.add(CONFIGS)
    with pytest.raises(errors.PermanentError, match="BuildConfig 'app'"):
        await update_status(
            kube, PATH, lambda doc: {"a": 1}, kind="BuildConfig", name="app", attempts=3
        )


async def test_missing_crds_are_named(kube: Kube, apiserver: FakeApiServer) -> None:
    await require_custom_resources(kube, "triggerd.dev/v1", ("builds", "imagestreams"), NAMESPACE)
    apiserver.unserved.add(("triggerd.dev/v1", "imagestreams"))
    with pytest.raises(errors.PermanentError, match=r"imagestreams\.triggerd\.dev.*'triggerd'"):
        await require_custom_resources(
            kube, "triggerd.dev/v1", ("builds", "imagestreams"), NAMESPACE
        )
    with pytest.raises(errors.PermanentError, match=r"imagestreams\.triggerd\.dev"):
        await KubernetesStreamsStore(kube, NAMESPACE).open()
    await KubernetesStore(kube, NAMESPACE).open()  # its own CRDs are there
    await KubernetesStreamsStore(kube, NAMESPACE).close()
    assert (await kube.list(path_for("triggerd.dev/v1", "builds", NAMESPACE)))["items"] == []
