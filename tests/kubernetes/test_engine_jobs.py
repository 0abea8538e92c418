"""``store: sqlite`` with ``executor: kubernetes``, wired by the server's own composition
root against the fake API server: builds started over the REST API run as Jobs, and every
way a build pod can end reaches the Build's final phase and reason through the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from tests import factories
from tests.kubernetes.cluster import DIGEST, JOBS, Cluster, result_message
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_executor import COMMIT
from tests.support.processes import async_wait_for
from triggerd.engine import Engine
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.kube import KubernetesSettings
from triggerd.planning import jobs
from triggerd.server import build_components
from triggerd.settings import Settings
from triggerd.store.sqlite import SqliteStore

TOKEN = "engine-jobs-token-0123456789"
IMAGE = "127.0.0.1:5000/team/app:latest"


@dataclass
class Server:
    client: TestClient[Any, Any]
    engine: Engine

    def path(self, resource: str) -> str:
        return f"/apis/build.openshift.io/v1/namespaces/{NAMESPACE}/{resource}"

    async def call(self, method: str, resource: str, json: Any = None) -> Any:
        response = await self.client.request(
            method,
            self.path(resource),
            json=json,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status < 300, await response.text()
        return await response.json()

    async def phase_of(self, name: str) -> tuple[str, str]:
        status = (await self.call("GET", f"builds/{name}"))["status"]
        return status["phase"], status.get("reason", "")


@pytest.fixture
async def server(
    kube_settings: KubernetesSettings, tmp_path: Path, aiohttp_client: AiohttpClient
) -> AsyncIterator[Server]:
    settings = Settings(
        data_dir=tmp_path,
        store="sqlite",
        executor="kubernetes",
        kubernetes=kube_settings,
        api_tokens=(TOKEN,),
        max_concurrent_builds=4,
    )
    engine, app = build_components(settings)
    assert isinstance(engine.store, SqliteStore)
    client: TestClient[Any, Any] = await aiohttp_client(app)  # starts the engine
    elector: Any = engine.leadership
    elector.start()
    await async_wait_for(lambda: elector.is_leader, timeout=5, what="leading")
    try:
        yield Server(client=client, engine=engine)
    finally:
        await elector.stop()
        await client.close()
        await elector.kube.close()


async def start_build(server: Server, cluster: Cluster) -> tuple[str, str]:
    await server.call("POST", "buildconfigs", factories.buildconfig_doc("app", namespace=NAMESPACE))
    build = await server.call("POST", "buildconfigs/app/instantiate", {"kind": "BuildRequest"})
    name = build["metadata"]["name"]
    job_name = jobs.name_job(NAMESPACE, name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="build pod")
    return name, job_name


def fetched(cluster: Cluster, job: str) -> None:
    cluster.start_fetch(job, b"Cloning...\n")
    cluster.finish_fetch(job, message=result_message(commit=COMMIT, stages=("FetchInputs",)))


def _complete(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job, b"STEP 1/1\n")
    cluster.finish_build(job, message=result_message(digest=DIGEST, stages=("Build",)))


def _oom(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job)
    cluster.finish_build(job, exit_code=137, reason="OOMKilled")


def _evicted(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job)
    cluster.evict(job)


def _drained(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job)
    cluster.drain(job)


def _docker_failed(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job, b"error: RUN false\n")
    cluster.finish_build(
        job,
        exit_code=1,
        message=result_message(succeeded=False, reason="DockerBuildFailed", message="exit 1"),
    )


def _fetch_failed(cluster: Cluster, job: str) -> None:
    cluster.start_fetch(job, b"fatal: repository not found\n")
    cluster.finish_fetch(
        job, exit_code=1, message=result_message(succeeded=False, reason="FetchSourceFailed")
    )


def _pod_deleted(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job)
    cluster.delete_pod(job)


def _deleted_while_fetching(cluster: Cluster, job: str) -> None:
    cluster.start_fetch(job)
    cluster.delete_pod(job)


def _deadline(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job)
    cluster.exceed_deadline(job)


def _runner_deadline(cluster: Cluster, job: str) -> None:
    fetched(cluster, job)
    cluster.start_build(job)
    cluster.finish_build(
        job, exit_code=3, message=result_message(succeeded=False, stopped="DeadlineExceeded")
    )


@pytest.mark.parametrize(
    ("act", "phase", "reason"),
    [
        (_complete, "Complete", ""),
        (_oom, "Failed", "OutOfMemoryKilled"),
        (_evicted, "Failed", "BuildPodEvicted"),
        (_drained, "Failed", "BuildPodEvicted"),
        (_docker_failed, "Failed", "DockerBuildFailed"),
        (_fetch_failed, "Failed", "FetchSourceFailed"),
        (_pod_deleted, "Error", "BuildPodDeleted"),
        (_deleted_while_fetching, "Error", "BuildPodDeleted"),
        (_deadline, "Failed", "ExceededRetryTimeout"),
        (_runner_deadline, "Failed", "ExceededRetryTimeout"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
async def test_each_pod_ending_reaches_the_builds_final_phase(
    server: Server,
    cluster: Cluster,
    apiserver: FakeApiServer,
    act: Callable[[Cluster, str], None],
    phase: str,
    reason: str,
) -> None:
    name, job_name = await start_build(server, cluster)
    act(cluster, job_name)

    async def final() -> bool:
        return (await server.phase_of(name))[0] == phase

    await async_wait_for(final, timeout=15, what=f"{name} {phase}")
    doc = await server.call("GET", f"builds/{name}")
    assert doc["status"].get("reason", "") == reason, doc["status"]
    if phase == "Complete":
        assert doc["status"]["output"]["to"]["imageDigest"] == DIGEST
        assert doc["spec"]["revision"]["git"]["commit"] == COMMIT
        assert cluster.job(job_name) is not None  # kept for its TTL
    else:
        assert doc["status"]["message"]
        # Failed or Error: the Job is deleted, no pod may build or push for it any more
        await async_wait_for(lambda: cluster.job(job_name) is None, timeout=5, what="Job gone")
    assert apiserver.calls.creates[JOBS] == [job_name]
    assert len(cluster.pods_made) == 1
    log = await server.client.get(
        server.path(f"builds/{name}/log"), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert log.status == 200


async def test_cancel_over_the_api_deletes_the_job_in_the_background(
    server: Server, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    name, job_name = await start_build(server, cluster)
    fetched(cluster, job_name)
    cluster.start_build(job_name)

    async def running() -> bool:
        return (await server.phase_of(name))[0] == "Running"

    await async_wait_for(running, timeout=10, what="Running")
    response = await server.client.patch(
        server.path(f"builds/{name}"),
        json={"status": {"cancelled": True}},
        headers={"Authorization": f"Bearer {TOKEN}",
                 "Content-Type": "application/merge-patch+json"},
    )  # fmt: skip
    assert response.status == 200, await response.text()

    async def cancelled() -> bool:
        return (await server.phase_of(name)) == ("Cancelled", "CancelledBuild")

    await async_wait_for(cancelled, timeout=10, what="Cancelled")
    assert (JOBS, job_name, "Background") in apiserver.calls.deletes
    await async_wait_for(lambda: not cluster.pod_names(job_name), timeout=5, what="pod gone")


def test_triggerd_serve_gives_the_job_executor_the_registry_settings(
    kube_settings: KubernetesSettings, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        executor="kubernetes",
        kubernetes=kube_settings,
        api_tokens=(TOKEN,),
        layer_cache_registry="cache.example.com/triggerd",
        image_stream_registry="streams.example.com",
    )
    engine, _ = build_components(settings)
    assert isinstance(engine.executor, KubernetesExecutor)
    assert engine.executor.layer_cache_registry == "cache.example.com/triggerd"
    assert engine.executor.image_stream_registry == "streams.example.com"
