"""Two engines in Kubernetes mode on one fake cluster: a webhook on the non-leader, the
leader runs the build; the leader stops mid-build and the other adopts the Job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import factories
from tests.kubernetes.cluster import DIGEST, JOBS, Cluster, result_message
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_executor import COMMIT
from tests.support.processes import async_wait_for
from triggerd.engine import Engine, StartRequest
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.kube import Kube, KubernetesSettings
from triggerd.leader import LeaderElector
from triggerd.logs import LogStore
from triggerd.model import requests
from triggerd.model.builds import Phase
from triggerd.planning import jobs
from triggerd.settings import Settings
from triggerd.store.base import Delivery
from triggerd.store.kubernetes import KubernetesStore


class Node:
    """One replica: its own client, store, executor, elector and engine."""

    def __init__(self, name: str, kube_settings: KubernetesSettings, tmp: Path) -> None:
        self.kube = Kube(settings=kube_settings)
        settings = Settings(
            data_dir=tmp / name, executor="kubernetes", store="kubernetes",
            kubernetes=kube_settings,
        )  # fmt: skip
        logs = self.logs = LogStore(tmp / name / "logs")
        self.store = KubernetesStore(self.kube, NAMESPACE)
        self.elector = LeaderElector(
            self.kube, namespace=NAMESPACE, name="triggerd-leader", identity=name,
            lease_duration_seconds=kube_settings.lease_duration_seconds,
            renew_interval_seconds=kube_settings.renew_interval_seconds,
        )  # fmt: skip
        executor = KubernetesExecutor(
            self.kube, kube_settings, logs, owner_builds=True, recheck_seconds=1
        )
        self.engine = Engine(
            settings=settings, store=self.store, executor=executor, logs=logs,
            leadership=self.elector,
        )  # fmt: skip
        self.elector.on_change = self.engine.on_leadership

    async def start(self) -> None:
        await self.engine.start()
        self.elector.start()

    async def stop(self) -> None:
        await self.elector.stop()
        await self.engine.stop()
        await self.kube.close()


@pytest.fixture
async def nodes(
    apiserver: FakeApiServer, kube_settings: KubernetesSettings, tmp_path: Path
) -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node("a", kube_settings, tmp_path), Node("b", kube_settings, tmp_path)
    await a.store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    await a.start()
    await async_wait_for(lambda: a.elector.is_leader, timeout=5, what="a leads")
    await b.start()
    try:
        yield a, b
    finally:
        for node in (a, b):
            await node.stop()


async def test_webhook_on_follower_is_built_by_the_leader_once(
    nodes: tuple[Node, Node], cluster: Cluster, apiserver: FakeApiServer
) -> None:
    a, b = nodes
    assert a.elector.is_leader and not b.elector.is_leader
    start = StartRequest(namespace=NAMESPACE, config_name="app", request=requests.BuildRequest())
    delivery = Delivery(key="github:abc", received=factories.T0)
    first = await b.engine.start_builds([start], delivery=delivery)
    again = await a.engine.start_builds([start], delivery=delivery)  # redelivered to a
    assert not first.duplicate and again.duplicate
    build = first.builds[0]
    job_name = jobs.name_job(NAMESPACE, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what=job_name)
    cluster.start_fetch(job_name)
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
    cluster.start_build(job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))

    async def done() -> bool:
        return (await a.store.get_build(NAMESPACE, build.name)).phase is Phase.COMPLETE

    await async_wait_for(done, timeout=15, what="build complete")
    finished = await b.store.get_build(NAMESPACE, build.name)
    assert finished.status.output_digest == DIGEST
    assert finished.spec.revision is not None and finished.spec.revision.commit == COMMIT
    assert apiserver.calls.creates[JOBS] == [job_name]


async def test_leader_stops_mid_build_and_the_other_adopts(
    nodes: tuple[Node, Node], cluster: Cluster, apiserver: FakeApiServer
) -> None:
    a, b = nodes
    start = StartRequest(namespace=NAMESPACE, config_name="app", request=requests.BuildRequest())
    build = (await b.engine.start_builds([start])).builds[0]
    job_name = jobs.name_job(NAMESPACE, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="job")
    cluster.start_fetch(job_name)
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
    cluster.start_build(job_name)

    async def running() -> bool:
        return (await b.store.get_build(NAMESPACE, build.name)).phase is Phase.RUNNING

    await async_wait_for(running, timeout=10, what="running")
    await a.elector.stop()  # releases: b leads on its next round and recovers
    await async_wait_for(lambda: b.elector.is_leader, timeout=5, what="b leads")
    await async_wait_for(
        lambda: apiserver.calls.create_conflicts.get(JOBS), timeout=10, what="b adopts"
    )
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))

    async def done() -> bool:
        return (await b.store.get_build(NAMESPACE, build.name)).phase is Phase.COMPLETE

    await async_wait_for(done, timeout=15, what="complete after hand-over")
    assert apiserver.calls.creates[JOBS] == [job_name]
    assert len(cluster.pods_made) == 1


async def test_cancel_on_the_follower_cancels_the_leaders_build(
    nodes: tuple[Node, Node], cluster: Cluster
) -> None:
    a, b = nodes
    start = StartRequest(namespace=NAMESPACE, config_name="app", request=requests.BuildRequest())
    build = (await a.engine.start_builds([start])).builds[0]
    job_name = jobs.name_job(NAMESPACE, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="job")
    cluster.start_fetch(job_name)
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
    cluster.start_build(job_name)

    async def phase_is(phase: Phase) -> bool:
        return (await a.store.get_build(NAMESPACE, build.name)).phase is phase

    await async_wait_for(lambda: phase_is(Phase.RUNNING), timeout=10, what="running")
    await b.engine.cancel_build(NAMESPACE, build.name)  # b is not the leader
    await async_wait_for(lambda: phase_is(Phase.CANCELLED), timeout=10, what="cancelled")
    assert cluster.job(job_name) is None


async def test_webhook_secrets_come_from_kubernetes_secrets(
    nodes: tuple[Node, Node], apiserver: FakeApiServer
) -> None:
    import base64

    from triggerd.model import buildconfigs

    _, b = nodes
    apiserver.put(
        ("v1", "secrets"),
        {"metadata": {"name": "hook", "namespace": NAMESPACE}, "type": "Opaque",
         "data": {"WebHookSecretKey": base64.b64encode(b"from-a-secret").decode()}},
    )  # fmt: skip
    doc = factories.buildconfig_doc("hooked", namespace=NAMESPACE)
    doc["apiVersion"] = "triggerd.dev/v1"
    doc["spec"]["triggers"] = [{"type": "GitHub", "github": {"secretReference": {"name": "hook"}}}]
    apiserver.put(("triggerd.dev/v1", "buildconfigs"), doc)  # kubectl apply
    hook = buildconfigs.parse(doc).triggers[0].webhook
    assert hook is not None
    await async_wait_for(
        lambda: b.engine.webhook_secret(hook) == "from-a-secret", timeout=10, what="secret"
    )
