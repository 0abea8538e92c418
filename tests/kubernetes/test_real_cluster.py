"""The same scenarios against a real cluster: run with KUBECONFIG set (and the CRDs and RBAC
from manifests/ applied); skipped otherwise. The build scenario also needs
TRIGGERD_TEST_IMAGE (an image of this repository's Dockerfile the cluster can pull) and a
node with the seccomp profile installed (docs/kubernetes.md)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import factories
from tests.kubernetes.test_executor import Recorder
from tests.kubernetes.test_store import new_build
from triggerd import errors
from triggerd.executors.base import Succeeded
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.kube import Kube, KubernetesSettings, connect
from triggerd.leader import LeaderElector
from triggerd.logs import LogStore
from triggerd.model import buildconfigs
from triggerd.store.kubernetes import KubernetesStore

pytestmark = [
    pytest.mark.kubernetes,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="KUBECONFIG is not set: no real cluster to run the Kubernetes suite against",
    ),
]
NAMESPACE = os.environ.get("TRIGGERD_TEST_NAMESPACE", "triggerd")


@pytest.fixture
async def real_kube() -> AsyncIterator[Kube]:
    settings = KubernetesSettings(namespace=NAMESPACE, kubeconfig=os.environ["KUBECONFIG"])
    kube = Kube(await connect(settings))
    try:
        yield kube
    finally:
        await kube.close()


@pytest.fixture
async def store(real_kube: Kube) -> KubernetesStore:
    store = KubernetesStore(real_kube, NAMESPACE)
    await store.open()  # a clear failure when the CRDs are missing
    return store


async def test_store_round_trip_and_numbering(store: KubernetesStore) -> None:
    name = f"it-{uuid.uuid4().hex[:8]}"
    await store.create_buildconfig(factories.buildconfig(name, namespace=NAMESPACE))
    try:
        made = await asyncio.gather(*(store.instantiate([new_build(name)]) for _ in range(4)))
        numbers = sorted(b.number for m in made for b in m.builds)
        assert numbers == [1, 2, 3, 4]
        assert (await store.get_buildconfig(NAMESPACE, name)).last_version == 4
    finally:
        await store.delete_buildconfig(NAMESPACE, name)
    with pytest.raises(errors.NotFound):
        await store.get_buildconfig(NAMESPACE, name)


async def test_lease_acquire_and_release(real_kube: Kube) -> None:
    lease = f"it-{uuid.uuid4().hex[:8]}"
    a = LeaderElector(real_kube, namespace=NAMESPACE, name=lease, identity="a",
                      lease_duration_seconds=5, renew_interval_seconds=1)  # fmt: skip
    b = LeaderElector(real_kube, namespace=NAMESPACE, name=lease, identity="b",
                      lease_duration_seconds=5, renew_interval_seconds=1)  # fmt: skip
    assert await a.try_once()
    assert not await b.try_once()
    await a.stop()
    assert await b.try_once()
    await real_kube.delete(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{lease}")


@pytest.mark.skipif(
    not os.environ.get("TRIGGERD_TEST_IMAGE"), reason="TRIGGERD_TEST_IMAGE is not set"
)
async def test_job_builds_without_output(real_kube: Kube, tmp_path: Path) -> None:
    doc = factories.buildconfig_doc(f"it-{uuid.uuid4().hex[:8]}", namespace=NAMESPACE, output=None)
    doc["spec"]["source"] = {"type": "Dockerfile", "dockerfile": "FROM scratch\nLABEL a=b\n"}
    config = buildconfigs.parse(doc)
    from triggerd.model import requests

    build = requests.instantiate(
        config, requests.BuildRequest(), number=1, uid="", created=factories.T0
    )
    settings = KubernetesSettings(
        namespace=NAMESPACE,
        image=os.environ["TRIGGERD_TEST_IMAGE"],
        seccomp_profile=os.environ.get("TRIGGERD_TEST_SECCOMP", "profiles/triggerd-buildah.json"),
        ttl_seconds_after_finished=60,
    )
    executor = KubernetesExecutor(real_kube, settings, LogStore(tmp_path), recheck_seconds=10)
    outcome = await asyncio.wait_for(executor.run(build, Recorder()), 600)
    assert isinstance(outcome, Succeeded), outcome
