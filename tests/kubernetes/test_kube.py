"""The Kube client layer against the fake API server: every way a connection can fail is
a KubeError (status 0, transient), so callers retry instead of dying on aiohttp's errors."""

from __future__ import annotations

import asyncio

import pytest

from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.support.processes import async_wait_for
from triggerd.kube import Kube, KubeError, path_for

PODS = ("v1", "pods")


def put_pod(apiserver: FakeApiServer, name: str = "p") -> None:
    apiserver.put(PODS, {"metadata": {"name": name, "namespace": NAMESPACE}, "status": {}})


async def test_a_closed_connection_is_a_transient_kube_error(
    kube: Kube, apiserver: FakeApiServer
) -> None:
    put_pod(apiserver)
    apiserver.abort_next[PODS] = 5  # aiohttp itself may retry a GET once
    with pytest.raises(KubeError) as caught:
        await kube.get(path_for("v1", "pods", NAMESPACE, "p"))
    assert caught.value.status == 0 and caught.value.transient
    apiserver.abort_next[PODS] = 0
    assert (await kube.get(path_for("v1", "pods", NAMESPACE, "p")))["metadata"]["name"] == "p"


async def test_a_watch_cut_mid_stream_is_a_transient_kube_error(
    kube: Kube, apiserver: FakeApiServer
) -> None:
    put_pod(apiserver)
    seen: list[str] = []

    async def consume() -> None:
        async for kind, _ in kube.watch(
            path_for("v1", "pods", NAMESPACE), resource_version="1", timeout_seconds=30
        ):
            seen.append(kind)

    task = asyncio.create_task(consume())
    await async_wait_for(lambda: seen, timeout=5, what="the first event")
    assert apiserver.drop_streams() == 1
    with pytest.raises(KubeError) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.value.transient


async def test_a_log_stream_cut_mid_way_is_a_transient_kube_error(
    kube: Kube, apiserver: FakeApiServer
) -> None:
    put_pod(apiserver)
    apiserver.append_log(NAMESPACE, "p", "build", b"first\n")
    received: list[bytes] = []

    async def consume() -> None:
        async for chunk in kube.stream(
            path_for("v1", "pods", NAMESPACE, "p") + "/log",
            {"container": "build", "follow": "true"},
        ):
            received.append(chunk)

    task = asyncio.create_task(consume())
    await async_wait_for(lambda: received, timeout=5, what="the first chunk")
    assert apiserver.drop_streams() == 1
    with pytest.raises(KubeError) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.value.transient
    assert b"".join(received) == b"first\n"
