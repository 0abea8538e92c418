"""Fixtures for Kubernetes mode: the fake API server, a kubeconfig pointing at it, a
kubernetes_asyncio client built from that kubeconfig, and the cluster simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.kubernetes.cluster import Cluster
from tests.kubernetes.fake_apiserver import FakeApiServer
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.kube import Kube, KubernetesSettings, connect
from triggerd.logs import LogStore

NAMESPACE = "triggerd"


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    apiserver.write_kubeconfig(str(path), NAMESPACE)
    return path


@pytest.fixture
def kube_settings(kubeconfig: Path) -> KubernetesSettings:
    return KubernetesSettings(
        namespace=NAMESPACE,
        kubeconfig=str(kubeconfig),
        image="registry.example.com/triggerd:1",
        lease_duration_seconds=2,
        renew_interval_seconds=0.2,
        secret_cache_seconds=0.5,
    )


@pytest.fixture
async def kube(kube_settings: KubernetesSettings) -> AsyncIterator[Kube]:
    client = Kube(await connect(kube_settings))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def cluster(apiserver: FakeApiServer) -> Cluster:
    return Cluster(apiserver, NAMESPACE)


@pytest.fixture
def logs(tmp_path: Path) -> LogStore:
    """A log store of the test's own (the executor tests read what a build logged)."""
    return LogStore(tmp_path / "logs")


@pytest.fixture
def executor(kube: Kube, kube_settings: KubernetesSettings, logs: LogStore) -> KubernetesExecutor:
    return KubernetesExecutor(kube, kube_settings, logs, recheck_seconds=1)
