"""The Kubernetes scenarios against a real cluster (marker ``kubernetes``): run only when
``KUBECONFIG`` is set, skipped otherwise (the skip says why).

docs/kubernetes.md ("The real-cluster suite") says how to run it. In short: the CRDs from
manifests/base applied, a user allowed to create namespaces (or an existing
``TRIGGERD_TEST_NAMESPACE``, default ``triggerd-e2e``), custom resources, Jobs, Leases,
Secrets and to label nodes. Scenarios that run a build pod need ``TRIGGERD_TEST_IMAGE``
(this repository's image, pullable by the cluster) and the seccomp profile on the nodes;
the one that pushes needs ``TRIGGERD_E2E_REGISTRY`` (host[:port] the build pods reach,
plain HTTP unless ``TRIGGERD_E2E_REGISTRY_INSECURE=false``). Each is skipped, saying which
variable is missing, otherwise.

Every replica here is what ``triggerd serve`` runs (:func:`triggerd.server.build_components`,
served on 127.0.0.1) with its own data directory and the suite's own Lease name, so a
triggerd deployed in the same namespace is not disturbed. Builds that must wait are held
Pending by a node selector no node matches until the test labels one node; every
BuildConfig, Lease and node label a test makes is removed at its end (Builds and Jobs go
with their BuildConfig through owner references).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests import factories
from tests.kubernetes.test_executor import Recorder
from tests.support.processes import async_wait_for
from triggerd import errors
from triggerd.engine import Engine, StartRequest
from triggerd.executors.base import Succeeded
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.kube import Kube, KubeError, KubernetesSettings, connect, path_for
from triggerd.leader import LeaderElector
from triggerd.logs import LogStore
from triggerd.model import buildconfigs, requests
from triggerd.model.builds import Build, Phase, Reason
from triggerd.planning import jobs
from triggerd.server import build_components
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery, NewBuild
from triggerd.store.kubernetes import KubernetesStore

CLUSTER = bool(os.environ.get("KUBECONFIG"))
pytestmark = [
    pytest.mark.kubernetes,
    pytest.mark.skipif(
        not CLUSTER,
        reason="KUBECONFIG is not set: no real cluster to run the Kubernetes suite against",
    ),
]
NAMESPACE = os.environ.get("TRIGGERD_TEST_NAMESPACE", "triggerd-e2e")
IMAGE = os.environ.get("TRIGGERD_TEST_IMAGE", "")
REGISTRY = os.environ.get("TRIGGERD_E2E_REGISTRY", "")
INSECURE = os.environ.get("TRIGGERD_E2E_REGISTRY_INSECURE", "true").lower() != "false"
needs_image = pytest.mark.skipif(
    CLUSTER and not IMAGE, reason="TRIGGERD_TEST_IMAGE is not set: no triggerd image for build pods"
)
needs_registry = pytest.mark.skipif(
    CLUSTER and not REGISTRY,
    reason="TRIGGERD_E2E_REGISTRY is not set: nowhere for build pods to push",
)
TOKEN = "real-cluster-suite-token-0123456789"
#: the label a held build's pod waits for (no node has it until the test releases it)
HOLD_LABEL = "triggerd.dev/e2e-hold"
JOBS_PATH = path_for("batch/v1", "jobs", NAMESPACE)
BUILD_SECONDS = 600  # a build pod: image pull, buildah, push
CLUSTER_SECONDS = 120  # the API server and the Job controller reacting


def unique(prefix: str = "it") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def kube_settings(**overrides: Any) -> KubernetesSettings:
    values: dict[str, Any] = {
        "namespace": NAMESPACE,
        "kubeconfig": os.environ["KUBECONFIG"],
        "image": IMAGE or "triggerd-e2e-image-unused:0",
        "seccomp_profile": os.environ.get(
            "TRIGGERD_TEST_SECCOMP", KubernetesSettings().seccomp_profile
        ),
        "apparmor_unconfined": os.environ.get("TRIGGERD_TEST_APPARMOR_UNCONFINED") == "true",
        "insecure_registries": frozenset({REGISTRY} if REGISTRY and INSECURE else ()),
        "ttl_seconds_after_finished": 300,
        "lease_name": unique("triggerd-e2e"),
        "lease_duration_seconds": 5,
        "renew_interval_seconds": 1.0,
        "secret_cache_seconds": 1.0,
    }
    values.update(overrides)
    return KubernetesSettings(**values)


# Fixtures -------------------------------------------------------------------------------------


@pytest.fixture
async def real_kube() -> AsyncIterator[Kube]:
    kube = Kube(await connect(kube_settings()))
    try:
        await ensure_namespace(kube)
        yield kube
    finally:
        await kube.close()


async def ensure_namespace(kube: Kube) -> None:
    """The suite's namespace, made (Pod Security level privileged, like manifests/base)
    when it does not exist yet; it is left in place afterwards."""
    try:
        await kube.get(path_for("v1", "namespaces", None, NAMESPACE))
        return
    except KubeError as e:
        if not e.not_found:
            raise
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
        },
    }
    try:
        await kube.create(path_for("v1", "namespaces", None), body)
    except KubeError as e:
        if not e.conflict:
            raise


@pytest.fixture
async def store(real_kube: Kube) -> KubernetesStore:
    store = KubernetesStore(real_kube, NAMESPACE)
    await store.open()  # a clear failure when the CRDs are missing
    return store


class Replica:
    """One ``triggerd serve``: build_components' engine and app, served on 127.0.0.1."""

    def __init__(self, engine: Engine, app: web.Application) -> None:
        self.engine = engine
        self.client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(app, host="127.0.0.1")
        )
        elector = engine.leadership
        assert isinstance(elector, LeaderElector)
        self.elector = elector
        self.stopped = False

    @property
    def store(self) -> KubernetesStore:
        store = self.engine.store
        assert isinstance(store, KubernetesStore)
        return store

    async def start(self, *, campaign: bool = True) -> None:
        await self.client.start_server()  # starts the engine, recovery included
        if campaign:
            self.elector.start()

    async def stop(self) -> None:
        """As SIGTERM: a leader releases the Lease, then the engine stops."""
        if self.stopped:
            return
        self.stopped = True
        await self.elector.stop()
        await self.client.close()  # stops the engine
        await self.elector.kube.close()  # the client build_components made


MakeReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def replicas(
    real_kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeReplica]:
    """Start replicas sharing one Lease (each has its own identity, as POD_NAME gives)."""
    settings = kube_settings()
    started: list[Replica] = []

    async def make(name: str, *, campaign: bool = True, wait_for_lead: bool = True) -> Replica:
        monkeypatch.setenv("POD_NAME", name)  # the elector's identity
        engine, app = build_components(
            Settings(
                data_dir=tmp_path / name,
                executor="kubernetes",
                store="kubernetes",
                kubernetes=settings,
                api_tokens=(TOKEN,),
            )
        )
        replica = Replica(engine, app)
        await replica.start(campaign=campaign)
        started.append(replica)
        if campaign and wait_for_lead:
            await async_wait_for(
                lambda: replica.elector.is_leader, timeout=CLUSTER_SECONDS, what=f"{name} leads"
            )
        return replica

    try:
        yield make
    finally:
        for replica in reversed(started):
            await replica.stop()
        lease = path_for("coordination.k8s.io/v1", "leases", NAMESPACE, settings.lease_name)
        try:
            await real_kube.delete(lease)
        except KubeError as e:
            if not e.not_found:
                raise


class Hold:
    """Builds whose nodeSelector is :attr:`selector` stay Pending until :meth:`release`
    labels one schedulable node with it."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.selector = {HOLD_LABEL: unique("hold")}
        self.node = ""

    async def release(self) -> None:
        listed = await self.kube.list(path_for("v1", "nodes", None))
        self.node = next(n["metadata"]["name"] for n in listed["items"] if schedulable(n))
        await self.kube.merge_patch(
            path_for("v1", "nodes", None, self.node), {"metadata": {"labels": self.selector}}
        )

    async def close(self) -> None:
        if self.node:
            await self.kube.merge_patch(
                path_for("v1", "nodes", None, self.node),
                {"metadata": {"labels": {HOLD_LABEL: None}}},
            )


def schedulable(node: dict[str, Any]) -> bool:
    spec, status = node.get("spec") or {}, node.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    tainted = any(t.get("effect") in ("NoSchedule", "NoExecute") for t in spec.get("taints") or [])
    return ready and not tainted and not spec.get("unschedulable")


@pytest.fixture
async def hold(real_kube: Kube) -> AsyncIterator[Hold]:
    held = Hold(real_kube)
    try:
        yield held
    finally:
        await held.close()


@pytest.fixture
async def configs(store: KubernetesStore) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Create BuildConfigs (removed, with their Builds and Jobs, at the end)."""
    made: list[str] = []

    async def make(**spec: Any) -> str:
        name = unique()
        doc = factories.buildconfig_doc(name, namespace=NAMESPACE, output=None)
        doc["spec"].update(spec)
        await store.create_buildconfig(buildconfigs.parse(doc))
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            with contextlib.suppress(errors.NotFound):
                await store.delete_buildconfig(NAMESPACE, name)


#: a Dockerfile source that needs no base image: one layer holding the Dockerfile itself
SCRATCH_SOURCE = {
    "type": "Dockerfile",
    "dockerfile": "FROM scratch\nCOPY Dockerfile /triggerd-e2e\n",
}
#: RUN needs a shell, and scratch has none: buildah fails the step
FAILING_SOURCE = {"type": "Dockerfile", "dockerfile": "FROM scratch\nRUN false\n"}


async def start(replica: Replica, config: str) -> Build:
    made = await replica.engine.start_builds(
        [StartRequest(namespace=NAMESPACE, config_name=config, request=requests.BuildRequest())]
    )
    return made.builds[0]


async def wait_for_phase(
    store: KubernetesStore, build: Build, phases: set[Phase], seconds: float
) -> Build:
    async def reached() -> Build | None:
        current = await store.get_build(NAMESPACE, build.name)
        return current if current.phase in phases else None

    return await async_wait_for(
        reached, timeout=seconds, what=f"{build.name} in {sorted(p.value for p in phases)}"
    )


async def job_of(kube: Kube, build: Build) -> dict[str, Any] | None:
    try:
        return await kube.get(f"{JOBS_PATH}/{jobs.name_job(NAMESPACE, build.name)}")
    except KubeError as e:
        if e.not_found:
            return None
        raise


async def jobs_of(kube: Kube, build: Build) -> list[dict[str, Any]]:
    selector = f"{jobs.BUILD_NAME_LABEL}={jobs.label_value(build.name)}"
    listed = await kube.list(JOBS_PATH, label_selector=selector)
    items: list[dict[str, Any]] = listed.get("items") or []
    return items


# The store and the Lease on a real API server ---------------------------------------------------


def new_build(config: str) -> NewBuild:
    def make(made_from: object, number: int) -> Build:
        assert isinstance(made_from, buildconfigs.BuildConfig)
        return requests.instantiate(
            made_from, requests.BuildRequest(), number=number, uid="", created=factories.T0
        )

    return NewBuild(namespace=NAMESPACE, config_name=config, make=make)


async def test_store_round_trip_and_numbering(store: KubernetesStore) -> None:
    name = unique()
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
    lease = unique("triggerd-e2e")
    a = LeaderElector(real_kube, namespace=NAMESPACE, name=lease, identity="a",
                      lease_duration_seconds=5, renew_interval_seconds=1)  # fmt: skip
    b = LeaderElector(real_kube, namespace=NAMESPACE, name=lease, identity="b",
                      lease_duration_seconds=5, renew_interval_seconds=1)  # fmt: skip
    try:
        assert await a.try_once()
        assert not await b.try_once()
        await a.stop()
        assert await b.try_once()
    finally:
        await real_kube.delete(path_for("coordination.k8s.io/v1", "leases", NAMESPACE, lease))


# Builds ----------------------------------------------------------------------------------------


@needs_image
@needs_registry
async def test_a_build_completes_with_its_digest_in_the_build_resource(
    configs: Callable[..., Awaitable[str]], real_kube: Kube, replicas: MakeReplica
) -> None:
    config = await configs(
        source=SCRATCH_SOURCE,
        output={"to": {"kind": "DockerImage", "name": f"{REGISTRY}/triggerd-e2e/scratch:latest"}},
    )
    leader = await replicas("a")
    build = await start(leader, config)
    done = await wait_for_phase(leader.store, build, {Phase.COMPLETE, Phase.FAILED,
                                                      Phase.ERROR}, BUILD_SECONDS)  # fmt: skip
    assert done.phase is Phase.COMPLETE, (done.status.reason, done.status.message)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", done.status.output_digest)
    # The resource as the API server keeps it: nothing triggerd wrote was pruned, and the
    # printer columns (type, status, started, completed, digest) have their values.
    raw = await real_kube.get(path_for("triggerd.dev/v1", "builds", NAMESPACE, build.name))
    assert raw["status"]["output"]["to"]["imageDigest"] == done.status.output_digest
    assert raw["status"]["phase"] == "Complete" and raw["spec"]["strategy"]["type"] == "Docker"
    assert raw["status"]["startTimestamp"] and raw["status"]["completionTimestamp"]
    assert raw["spec"]["source"] == SCRATCH_SOURCE
    log_url = f"/apis/build.openshift.io/v1/namespaces/{NAMESPACE}/builds/{build.name}/log"
    response = await leader.client.get(log_url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200 and "COPY Dockerfile" in await response.text()


@needs_image
async def test_a_failing_dockerfile_fails_the_build(
    configs: Callable[..., Awaitable[str]], replicas: MakeReplica
) -> None:
    config = await configs(source=FAILING_SOURCE)
    leader = await replicas("a")
    build = await start(leader, config)
    done = await wait_for_phase(leader.store, build, {Phase.COMPLETE, Phase.FAILED,
                                                      Phase.ERROR}, BUILD_SECONDS)  # fmt: skip
    assert done.phase is Phase.FAILED
    assert done.status.reason == Reason.DOCKER_BUILD_FAILED.value, done.status.message
    assert done.status.log_snippet


async def test_cancel_deletes_the_job(
    configs: Callable[..., Awaitable[str]], hold: Hold, real_kube: Kube, replicas: MakeReplica
) -> None:
    """No image is pulled: the pod never leaves Pending."""
    config = await configs(source=SCRATCH_SOURCE, nodeSelector=hold.selector)
    leader = await replicas("a")
    build = await start(leader, config)
    await async_wait_for(lambda: job_of(real_kube, build), timeout=CLUSTER_SECONDS, what="Job")
    await leader.engine.cancel_build(NAMESPACE, build.name)
    done = await wait_for_phase(leader.store, build, {Phase.CANCELLED}, CLUSTER_SECONDS)
    assert done.status.cancelled

    async def job_gone() -> bool:
        return await job_of(real_kube, build) is None

    await async_wait_for(job_gone, timeout=CLUSTER_SECONDS, what="the Job deleted")


async def test_deadline_fails_with_exceeded_retry_timeout(
    configs: Callable[..., Awaitable[str]], hold: Hold, real_kube: Kube, replicas: MakeReplica
) -> None:
    """completionDeadlineSeconds becomes the Job's activeDeadlineSeconds; the Job
    controller ends the held (never scheduled) pod when it passes."""
    config = await configs(
        source=SCRATCH_SOURCE, nodeSelector=hold.selector, completionDeadlineSeconds=10
    )
    leader = await replicas("a")
    build = await start(leader, config)
    job = await async_wait_for(lambda: job_of(real_kube, build), timeout=CLUSTER_SECONDS,
                               what="Job")  # fmt: skip
    assert job["spec"]["activeDeadlineSeconds"] == 10
    done = await wait_for_phase(leader.store, build, {Phase.COMPLETE, Phase.FAILED,
                                                      Phase.ERROR}, CLUSTER_SECONDS)  # fmt: skip
    assert (done.phase, done.status.reason) == (
        Phase.FAILED,
        Reason.EXCEEDED_RETRY_TIMEOUT.value,
    ), done.status.message


@needs_image
async def test_a_restarted_triggerd_adopts_the_job(
    configs: Callable[..., Awaitable[str]], hold: Hold, real_kube: Kube, replicas: MakeReplica
) -> None:
    config = await configs(source=SCRATCH_SOURCE, nodeSelector=hold.selector)
    first = await replicas("a")
    build = await start(first, config)
    job = await async_wait_for(lambda: job_of(real_kube, build), timeout=CLUSTER_SECONDS,
                               what="Job")  # fmt: skip
    await first.stop()  # SIGTERM: releases the Lease, the engine stops, the Job stays

    second = await replicas("b")  # a new engine: recovers, adopts the running Job
    await hold.release()
    done = await wait_for_phase(second.store, build, {Phase.COMPLETE, Phase.FAILED,
                                                      Phase.ERROR}, BUILD_SECONDS)  # fmt: skip
    assert done.phase is Phase.COMPLETE, (done.status.reason, done.status.message)
    found = await jobs_of(real_kube, build)
    assert [j["metadata"]["uid"] for j in found] == [job["metadata"]["uid"]]  # no second Job


async def test_a_webhook_on_a_follower_is_run_by_the_leader(
    configs: Callable[..., Awaitable[str]], hold: Hold, real_kube: Kube, replicas: MakeReplica
) -> None:
    secret = uuid.uuid4().hex
    config = await configs(
        source=SCRATCH_SOURCE,
        nodeSelector=hold.selector,
        triggers=[{"type": "Generic", "generic": {"secret": secret}}],
    )
    leader = await replicas("a")
    follower = await replicas("b", campaign=False)  # serves the API, never leads
    assert leader.elector.is_leader and not follower.elector.is_leader
    url = (
        f"/apis/build.openshift.io/v1/namespaces/{NAMESPACE}/buildconfigs/{config}"
        f"/webhooks/{secret}/generic"
    )
    response = await follower.client.post(url)
    assert response.status == 201, await response.text()
    query = BuildQuery(namespace=NAMESPACE, config_name=config)
    made = (await follower.store.list_builds(query)).builds
    assert len(made) == 1
    build = made[0]
    assert build.triggered_by[0].get("genericWebHook") is not None
    # the leader, not the follower, makes the Job
    await async_wait_for(lambda: job_of(real_kube, build), timeout=CLUSTER_SECONDS, what="Job")
    assert len(await jobs_of(real_kube, build)) == 1
    # a cancel on the follower reaches the leader's Job
    await follower.engine.cancel_build(NAMESPACE, build.name)
    await wait_for_phase(leader.store, build, {Phase.CANCELLED}, CLUSTER_SECONDS)


# The executor alone --------------------------------------------------------------------------


@needs_image
async def test_the_job_executor_builds_without_output(real_kube: Kube, tmp_path: Path) -> None:
    """The executor with the SQLite-store combination: no Build resource, no owner."""
    doc = factories.buildconfig_doc(unique(), namespace=NAMESPACE, output=None)
    doc["spec"]["source"] = SCRATCH_SOURCE
    build = requests.instantiate(
        buildconfigs.parse(doc), requests.BuildRequest(), number=1, uid=str(uuid.uuid4()),
        created=factories.T0,
    )  # fmt: skip
    executor = KubernetesExecutor(real_kube, kube_settings(), LogStore(tmp_path), recheck_seconds=5)
    try:
        outcome = await asyncio.wait_for(executor.run(build, Recorder()), BUILD_SECONDS)
        assert isinstance(outcome, Succeeded), outcome
    finally:
        try:
            await real_kube.delete(f"{JOBS_PATH}/{jobs.name_job(NAMESPACE, build.name)}")
        except KubeError as e:
            if not e.not_found:
                raise
