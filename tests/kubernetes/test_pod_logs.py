"""Build logs served by a replica that did not run the build.

Replica ``a`` leads and runs the build (its log store fills from the pod); replica ``b`` is
the real composition root (:func:`triggerd.server.build_components`) with its own, empty
log directory, serving the REST API on 127.0.0.1: it reads the log from the build pod
through the (fake) API server while the pod exists, and from the log store when
``logsDir`` is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests import factories
from tests.kubernetes.cluster import DIGEST, Cluster, result_message
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_engine_wiring import Node
from tests.kubernetes.test_executor import COMMIT
from tests.support.processes import async_wait_for
from triggerd.engine import StartRequest
from triggerd.kube import KubernetesSettings
from triggerd.model import requests
from triggerd.model.builds import Build, Phase
from triggerd.planning import jobs
from triggerd.server import build_components
from triggerd.settings import Settings

TOKEN = "pod-logs-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def leader(
    apiserver: FakeApiServer, kube_settings: KubernetesSettings, tmp_path: Path
) -> AsyncIterator[Node]:
    a = Node("a", kube_settings, tmp_path)
    await a.store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    await a.start()
    await async_wait_for(lambda: a.elector.is_leader, timeout=5, what="a leads")
    try:
        yield a
    finally:
        await a.stop()


async def follower(
    kube_settings: KubernetesSettings, data_dir: Path, logs_dir: Path | None
) -> TestClient[web.Request, web.Application]:
    """Replica b as ``triggerd serve`` builds it; its elector is never started, so it
    never leads (it only serves the API)."""
    settings = Settings(
        data_dir=data_dir, logs_dir=logs_dir, executor="kubernetes", store="kubernetes",
        kubernetes=kube_settings, api_tokens=(TOKEN,),
    )  # fmt: skip
    _, app = build_components(settings)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


def log_url(build: Build) -> str:
    return f"/apis/build.openshift.io/v1/namespaces/{NAMESPACE}/builds/{build.name}/log"


async def start_build(leader: Node, cluster: Cluster) -> tuple[Build, str]:
    start = StartRequest(namespace=NAMESPACE, config_name="app", request=requests.BuildRequest())
    build = (await leader.engine.start_builds([start])).builds[0]
    job_name = jobs.name_job(NAMESPACE, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="the pod")
    cluster.start_fetch(job_name, b"Cloning...\n")
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
    cluster.start_build(job_name, b"STEP 1/2: FROM busybox\n")
    return build, job_name


async def phase_of(node: Node, build: Build) -> Phase:
    return (await node.store.get_build(NAMESPACE, build.name)).phase


async def test_another_replica_reads_and_follows_the_log_from_the_pod(
    leader: Node, cluster: Cluster, kube_settings: KubernetesSettings, tmp_path: Path
) -> None:
    build, job_name = await start_build(leader, cluster)
    client = await follower(kube_settings, tmp_path / "b", None)
    try:
        response = await client.get(log_url(build), headers=AUTH)
        assert response.status == 200
        assert await response.text() == "Cloning...\nSTEP 1/2: FROM busybox\n"
        response = await client.get(log_url(build), headers=AUTH, params={"tailLines": "1"})
        assert await response.text() == "STEP 1/2: FROM busybox\n"
        assert not (tmp_path / "b" / "logs" / NAMESPACE / f"{build.name}.log").exists()

        followed = await client.get(
            log_url(build), headers=AUTH, params={"follow": "true", "tailLines": "1"}
        )
        assert followed.status == 200
        first = await followed.content.readline()
        assert first == b"STEP 1/2: FROM busybox\n"
        cluster.log(job_name, "build", b"STEP 2/2: RUN true\n")
        assert await asyncio.wait_for(followed.content.readline(), 10) == b"STEP 2/2: RUN true\n"
        cluster.finish_build(job_name, message=result_message(digest=DIGEST))
        # The stream ends once the leader has recorded the end of the build.
        assert await asyncio.wait_for(followed.content.read(), 15) == b""
        assert await phase_of(leader, build) is Phase.COMPLETE

        # Once the pod is gone (Job TTL, here deleted), only the leader's store has the log.
        await leader.kube.delete(
            f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job_name}", propagation="Background"
        )
        await async_wait_for(lambda: not cluster.pod_names(job_name), timeout=10, what="gone")
        response = await client.get(log_url(build), headers=AUTH)
        assert await response.text() == ""
        kept = leader.logs.read(NAMESPACE, build.name).decode()
        assert "Cloning...\n" in kept and "STEP 2/2: RUN true\n" in kept
    finally:
        await client.close()


async def test_a_follower_waits_for_the_pod_of_a_queued_build(
    leader: Node, cluster: Cluster, kube_settings: KubernetesSettings, tmp_path: Path
) -> None:
    """follow=true before the init container runs: the stream starts with the pod's logs."""
    client = await follower(kube_settings, tmp_path / "b", None)
    try:
        start = StartRequest(
            namespace=NAMESPACE, config_name="app", request=requests.BuildRequest()
        )
        build = (await leader.engine.start_builds([start])).builds[0]
        job_name = jobs.name_job(NAMESPACE, build.name)
        followed = await client.get(log_url(build), headers=AUTH, params={"follow": "true"})
        await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="the pod")
        cluster.start_fetch(job_name, b"Cloning...\n")
        assert await asyncio.wait_for(followed.content.readline(), 10) == b"Cloning...\n"
        cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
        cluster.start_build(job_name, b"STEP 1/1: FROM busybox\n")
        line = await asyncio.wait_for(followed.content.readline(), 10)
        assert line == b"STEP 1/1: FROM busybox\n"
        cluster.finish_build(job_name, message=result_message(digest=DIGEST))
        assert await asyncio.wait_for(followed.content.read(), 15) == b""
    finally:
        await client.close()


async def test_a_shared_logs_dir_serves_the_log_after_the_pod_is_gone(
    leader: Node, cluster: Cluster, kube_settings: KubernetesSettings, tmp_path: Path
) -> None:
    build, job_name = await start_build(leader, cluster)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))

    async def complete() -> bool:
        return await phase_of(leader, build) is Phase.COMPLETE

    await async_wait_for(complete, timeout=15, what="complete")
    cluster.server.remove(("batch/v1", "jobs"), NAMESPACE, job_name)
    await async_wait_for(lambda: not cluster.pod_names(job_name), timeout=10, what="gone")
    # The leader's log directory (Node "a" keeps it in <tmp>/a/logs), shared as logsDir.
    client = await follower(kube_settings, tmp_path / "b", tmp_path / "a" / "logs")
    try:
        response = await client.get(log_url(build), headers=AUTH)
        text = await response.text()
        assert "Cloning...\n" in text and "STEP 1/2: FROM busybox\n" in text
    finally:
        await client.close()
