"""Two triggerd replicas in Kubernetes mode on one fake cluster, each with its own client,
store, executor, elector and engine: a leader hand-over in the middle of many builds, a
signed webhook delivered over HTTP to the replica that does not lead, writes of both
replicas to one Build, and BuildConfigs applied with kubectl."""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from tests import factories
from tests.intake.payloads import raw
from tests.kubernetes.cluster import DIGEST, JOBS, Cluster, result_message
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_executor import COMMIT
from tests.support.processes import async_wait_for
from triggerd import lifecycle
from triggerd.engine import Engine, StartRequest
from triggerd.errors import FieldError, Invalid
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.intake import signatures
from triggerd.kube import Kube, KubernetesSettings
from triggerd.leader import LeaderElector
from triggerd.logs import LogStore
from triggerd.model import buildconfigs, builds, requests
from triggerd.model.builds import Build, Phase, Stage, StageName
from triggerd.planning import jobs
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery
from triggerd.store.kubernetes import KubernetesStore
from triggerd.web import webhooks
from triggerd.web.app import make_app

BCS = ("triggerd.dev/v1", "buildconfigs")
BUILDS = ("triggerd.dev/v1", "builds")
TOKEN = "replicas-token-0123456789"
HOOK_SECRET = "hook-secret-5ac3e1"
PUSH = raw("github/push-many-commits.json")
GITHUB_URI = "https://github.com/Codertocat/Hello-World.git"


class Node:
    """One replica. ``ended`` lists every build whose end this replica recorded."""

    def __init__(
        self, name: str, kube_settings: KubernetesSettings, tmp: Path, **settings: Any
    ) -> None:
        self.name = name
        self.kube = Kube(settings=kube_settings)
        self.settings = Settings(
            data_dir=tmp / name, executor="kubernetes", store="kubernetes",
            kubernetes=kube_settings, api_tokens=(TOKEN,), **settings,
        )  # fmt: skip
        self.logs = LogStore(tmp / name / "logs")
        self.store = KubernetesStore(self.kube, NAMESPACE, secret_cache_seconds=0.5)
        self.elector = LeaderElector(
            self.kube, namespace=NAMESPACE, name="triggerd-leader", identity=name,
            lease_duration_seconds=kube_settings.lease_duration_seconds,
            renew_interval_seconds=kube_settings.renew_interval_seconds,
        )  # fmt: skip
        self.executor = KubernetesExecutor(
            self.kube, kube_settings, self.logs, owner_builds=True, recheck_seconds=1
        )
        self.engine = Engine(
            settings=self.settings, store=self.store, executor=self.executor, logs=self.logs,
            leadership=self.elector,
        )  # fmt: skip
        self.elector.on_change = self.engine.on_leadership
        self.ended: list[str] = []
        original = self.engine._ended

        async def ended(build: Build) -> None:
            self.ended.append(build.name)
            await original(build)

        self.engine._ended = ended  # type: ignore[method-assign]
        self.client: TestClient[Any, Any] | None = None
        self._stopped = False

    async def start(self, aiohttp_client: AiohttpClient | None = None) -> None:
        """Start the engine (through the web app's startup when it serves HTTP), then
        campaign, as ``triggerd serve`` does."""
        if aiohttp_client is None:
            await self.engine.start()
        else:
            app = make_app(self.engine, self.logs, self.settings, extra_routes=webhooks.ROUTES)
            self.client = await aiohttp_client(TestServer(app))
        self.elector.start()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.elector.stop()
        if self.client is not None:
            await self.client.close()  # stops the engine (the app's cleanup)
        else:
            await self.engine.stop()
        await self.kube.close()


@pytest.fixture
async def make_node(
    kube_settings: KubernetesSettings, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    nodes: list[Node] = []

    async def make(
        name: str, *, aiohttp_client: AiohttpClient | None = None, **settings: Any
    ) -> Node:
        node = Node(name, kube_settings, tmp_path, **settings)
        nodes.append(node)
        await node.start(aiohttp_client)
        return node

    yield make
    for node in nodes:
        await node.stop()


class _Campaigns(Protocol):
    elector: LeaderElector


R = TypeVar("R", bound=_Campaigns)


async def leader_and_follower(
    make_node: Callable[..., Awaitable[R]], **settings: Any
) -> tuple[R, R]:
    """Replica a, leading and settled, then replica b, which has looked at the Lease."""
    a = await make_node("a", **settings)
    await async_wait_for(lambda: a.elector.is_leader, timeout=5, what="a leads")
    await async_wait_for(lambda: a.elector.settled.is_set(), timeout=5, what="a settled")
    b = await make_node("b", **settings)
    await async_wait_for(lambda: b.elector._observed is not None, timeout=5, what="b looked")
    assert not b.elector.is_leader
    return a, b


def github_hook_config(apiserver: FakeApiServer) -> dict[str, Any]:
    """BuildConfig ``hello`` of GITHUB_URI's main with a GitHub trigger whose secret is the
    Kubernetes Secret ``github-hook`` (HOOK_SECRET), which this puts in the API server."""
    apiserver.put(
        ("v1", "secrets"),
        {"metadata": {"name": "github-hook", "namespace": NAMESPACE}, "type": "Opaque",
         "data": {"WebHookSecretKey": base64.b64encode(HOOK_SECRET.encode()).decode()}},
    )  # fmt: skip
    doc = factories.buildconfig_doc("hello", namespace=NAMESPACE, uri=GITHUB_URI, ref="main")
    doc["spec"]["triggers"] = [
        {"type": "GitHub", "github": {"secretReference": {"name": "github-hook"}}}
    ]
    return doc


async def create_config(store: KubernetesStore, name: str, **kwargs: Any) -> None:
    await store.create_buildconfig(factories.buildconfig(name, namespace=NAMESPACE, **kwargs))


def run_pod(cluster: Cluster, job_name: str) -> None:
    cluster.start_fetch(job_name, b"Cloning...\n")
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
    cluster.start_build(job_name, b"STEP 1/1\n")


def job_names(apiserver: FakeApiServer) -> list[str]:
    return [j["metadata"]["name"] for j in apiserver.list(JOBS, NAMESPACE)]


async def phases(store: KubernetesStore) -> collections.Counter[Phase]:
    page = await store.list_builds(BuildQuery(namespace=NAMESPACE))
    return collections.Counter(b.phase for b in page.builds)


# Hand-over under load ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["released", "crashed"])
async def test_hand_over_under_load_ends_every_build_exactly_once(
    make_node: Callable[..., Awaitable[Node]],
    cluster: Cluster,
    apiserver: FakeApiServer,
    how: str,
) -> None:
    """Twelve builds of three Parallel configs, four at a time. The leader goes away (it
    releases the Lease on SIGTERM, or it crashes and the Lease expires) with two builds
    done, four running, six queued, and one more finishing while nobody leads. The other
    replica takes over: every build ends Complete, recorded once, with one Job each."""
    a, b = await leader_and_follower(make_node, max_concurrent_builds=4)
    for config in ("x", "y", "z"):
        await create_config(a.store, config, run_policy="Parallel")
    starts = [
        StartRequest(namespace=NAMESPACE, config_name=config, request=requests.BuildRequest())
        for config in ("x", "y", "z")
        for _ in range(4)
    ]
    created = await b.engine.start_builds(starts)  # a webhook on the follower
    names = {build.name for build in created.builds}
    assert len(names) == 12
    done: set[str] = set()

    def finish(job_name: str) -> None:
        cluster.finish_build(job_name, message=result_message(digest=DIGEST))
        done.add(job_name)

    await async_wait_for(lambda: len(job_names(apiserver)) == 4, timeout=10, what="4 Jobs")
    for job_name in job_names(apiserver):
        run_pod(cluster, job_name)

    async def count(phase: Phase, wanted: int) -> bool:
        return (await phases(a.store))[phase] == wanted

    await async_wait_for(lambda: count(Phase.RUNNING, 4), timeout=10, what="4 running")
    for job_name in job_names(apiserver)[:2]:
        finish(job_name)
    await async_wait_for(lambda: count(Phase.COMPLETE, 2), timeout=10, what="2 complete")
    await async_wait_for(lambda: len(job_names(apiserver)) == 6, timeout=10, what="6 Jobs")
    for job_name in set(job_names(apiserver)) - done:
        if not cluster.pod(job_name)["status"].get("containerStatuses"):
            run_pod(cluster, job_name)
    await async_wait_for(lambda: count(Phase.RUNNING, 4), timeout=10, what="4 running again")

    if how == "released":
        await a.elector.stop()  # SIGTERM: a stops leading, then releases the Lease
    else:
        assert a.elector._task is not None
        a.elector._task.cancel()  # a's process dies: no release, no more renewals
        await a.engine.stop()
    finish(sorted(set(job_names(apiserver)) - done)[0])  # ends while nobody watches it
    await async_wait_for(lambda: b.elector.is_leader, timeout=10, what="b leads")

    while len(done) < 12:
        waiting = await async_wait_for(
            lambda: sorted(set(job_names(apiserver)) - done), timeout=15, what="next Job"
        )
        for job_name in waiting:
            if not cluster.pod(job_name)["status"].get("containerStatuses"):
                run_pod(cluster, job_name)
            finish(job_name)

    await async_wait_for(lambda: count(Phase.COMPLETE, 12), timeout=20, what="12 complete")
    page = await b.store.list_builds(BuildQuery(namespace=NAMESPACE))
    assert {build.name for build in page.builds} == names  # none lost, none added
    assert all(build.status.output_digest == DIGEST for build in page.builds)
    ended = collections.Counter(a.ended + b.ended)
    assert set(ended) == names and set(ended.values()) == {1}, ended
    assert sorted(apiserver.calls.creates[JOBS]) == sorted(
        jobs.name_job(NAMESPACE, name) for name in names
    )
    assert len(cluster.pods_made) == 12


# Webhooks on the follower ------------------------------------------------------------------


async def test_a_signed_github_delivery_to_the_follower_is_built_by_the_leader(
    make_node: Callable[..., Awaitable[Node]],
    cluster: Cluster,
    apiserver: FakeApiServer,
    aiohttp_client: AiohttpClient,
) -> None:
    """A real signed push delivery over HTTP to ``/hooks/github`` of the replica that does
    not lead, verified with a secret from a Kubernetes Secret: the leader builds it once,
    and the redelivery (GitHub's "Redeliver") starts nothing."""
    doc = github_hook_config(apiserver)
    a = await make_node("a")
    await a.store.create_buildconfig(buildconfigs.parse(doc))
    await async_wait_for(lambda: a.elector.is_leader, timeout=5, what="a leads")
    b = await make_node("b", aiohttp_client=aiohttp_client)
    assert b.client is not None and not b.elector.is_leader
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signatures.sign_github(PUSH, HOOK_SECRET),
    }
    await async_wait_for(
        lambda: b.engine.named_secret("github-hook") == HOOK_SECRET, timeout=5, what="secret"
    )
    reply = await b.client.post("/hooks/github", data=PUSH, headers=headers)
    assert reply.status == 201, await reply.text()
    job_name = jobs.name_job(NAMESPACE, "hello-1")
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="the Job")
    run_pod(cluster, job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))

    async def complete() -> bool:
        return (await b.store.get_build(NAMESPACE, "hello-1")).phase is Phase.COMPLETE

    await async_wait_for(complete, timeout=15, what="built by the leader")
    again = await b.client.post("/hooks/github", data=PUSH, headers=headers)
    assert again.status in (200, 201), await again.text()
    assert json.loads(await again.text()) is not None
    wrong = dict(headers, **{"X-Hub-Signature-256": signatures.sign_github(PUSH, "nope"),
                             "X-GitHub-Delivery": "another"})  # fmt: skip
    assert (await b.client.post("/hooks/github", data=PUSH, headers=wrong)).status == 401
    page = await b.store.list_builds(BuildQuery(namespace=NAMESPACE))
    assert [build.name for build in page.builds] == ["hello-1"]
    assert json.loads(PUSH)["after"] in json.dumps(page.builds[0].triggered_by)
    assert apiserver.calls.creates[JOBS] == [job_name]
    assert a.ended == ["hello-1"] and b.ended == []


# Writes of two replicas to one Build ---------------------------------------------------------


async def test_a_cancel_written_between_the_leaders_read_and_write_is_kept(
    make_node: Callable[..., Awaitable[Node]], apiserver: FakeApiServer
) -> None:
    """The follower marks the build cancelled just after the leader read it to record a
    stage: the leader's write conflicts, it reads again, and both changes stand."""
    a = await make_node("a")
    await create_config(a.store, "app")
    build = (await a.store.instantiate([_new("app")])).builds[0]
    stage = Stage(name=StageName.BUILD, start_time=factories.T0, duration_ms=5)
    calls = 0

    def record(current: Build) -> Build:
        nonlocal calls
        calls += 1
        if calls == 1:  # the follower's cancel lands now
            doc = apiserver.get(BUILDS, NAMESPACE, build.name)
            assert doc is not None
            doc.setdefault("status", {})["cancelled"] = True
            apiserver.put(BUILDS, doc)
        return lifecycle.record_stage(current, stage)

    saved = await a.engine.update(NAMESPACE, build.name, record)
    assert calls == 2  # applied again on the fresh read
    assert saved.status.cancelled and [s.name for s in saved.status.stages] == [StageName.BUILD]
    stored = await a.store.get_build(NAMESPACE, build.name)
    assert stored.status.cancelled and stored.status.stages


async def test_a_cancel_the_follower_could_not_finish_is_finished_by_the_leader(
    make_node: Callable[..., Awaitable[Node]], cluster: Cluster, apiserver: FakeApiServer
) -> None:
    """The follower records the cancel but cannot delete the Job (the API answers 500):
    the leader sees the mark and stops the build."""
    a, b = await leader_and_follower(make_node)
    await create_config(a.store, "app")
    start = StartRequest(namespace=NAMESPACE, config_name="app", request=requests.BuildRequest())
    build = (await b.engine.start_builds([start])).builds[0]
    job_name = jobs.name_job(NAMESPACE, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="the Job")
    run_pod(cluster, job_name)

    async def phase_is(phase: Phase) -> bool:
        return (await b.store.get_build(NAMESPACE, build.name)).phase is phase

    await async_wait_for(lambda: phase_is(Phase.RUNNING), timeout=10, what="running")
    apiserver.fail_next[JOBS] = 1  # the follower's DELETE of the Job fails
    with pytest.raises(Exception, match="500"):
        await b.engine.cancel_build(NAMESPACE, build.name)
    assert (await b.store.get_build(NAMESPACE, build.name)).status.cancelled
    await async_wait_for(lambda: phase_is(Phase.CANCELLED), timeout=10, what="cancelled")
    assert cluster.job(job_name) is None
    assert a.ended == [build.name]


async def test_a_pending_build_without_a_job_is_run_by_the_next_leader(
    make_node: Callable[..., Awaitable[Node]],
    kube: Kube,
    cluster: Cluster,
    apiserver: FakeApiServer,
) -> None:
    """The previous leader marked the build Pending and died before creating its Job: the
    next leader creates the Job (the name is the build's) instead of failing the build."""
    store = KubernetesStore(kube, NAMESPACE)
    await create_config(store, "app")
    build = (await store.instantiate([_new("app")])).builds[0]
    pending = lifecycle.advance(build, Phase.PENDING, now=factories.T0)
    await store.update_build(pending, expected_resource_version=build.meta.resource_version)
    a = await make_node("a")
    job_name = jobs.name_job(NAMESPACE, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="Job created")
    run_pod(cluster, job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))

    async def complete() -> bool:
        return (await store.get_build(NAMESPACE, build.name)).phase is Phase.COMPLETE

    await async_wait_for(complete, timeout=10, what="complete")
    assert apiserver.calls.creates[JOBS] == [job_name]
    assert a.ended == [build.name]


def _new(config: str) -> Any:
    from tests.kubernetes.test_store import new_build

    return new_build(config)


# BuildConfigs applied with kubectl -----------------------------------------------------------


def applied(name: str, **spec: Any) -> dict[str, Any]:
    """A BuildConfig as `kubectl apply` stores it (no status: a subresource)."""
    doc = factories.buildconfig_doc(name, namespace=NAMESPACE, **spec)
    doc["apiVersion"] = "triggerd.dev/v1"
    return doc


async def test_a_config_applied_with_kubectl_gets_its_configchange_build_once(
    make_node: Callable[..., Awaitable[Node]], apiserver: FakeApiServer
) -> None:
    """As through the REST API: the leader starts the ConfigChange build, exactly once,
    even when the config is also created through the REST API of the follower at the same
    time, and when leadership changes afterwards."""
    a, b = await leader_and_follower(make_node)
    apiserver.put(BCS, applied("kubectl", triggers=[{"type": "ConfigChange"}]))
    rest = factories.buildconfig_doc("rest", namespace=NAMESPACE,
                                     triggers=[{"type": "ConfigChange"}])  # fmt: skip
    await b.engine.create_buildconfig(rest, namespace=NAMESPACE)  # and its leader's watch

    async def built(config: str) -> bool:
        page = await a.store.list_builds(BuildQuery(namespace=NAMESPACE, config_name=config))
        return [build.name for build in page.builds] == [f"{config}-1"]

    await async_wait_for(lambda: built("kubectl"), timeout=10, what="kubectl-1")
    await async_wait_for(lambda: built("rest"), timeout=10, what="rest-1")
    first = (await a.store.get_build(NAMESPACE, "kubectl-1")).triggered_by
    assert first[0]["message"] == "Build configuration change"
    # b takes over and sweeps every config: nothing is started again
    await a.elector.stop()
    await async_wait_for(lambda: b.elector.is_leader, timeout=5, what="b leads")
    await async_wait_for(lambda: b.elector.settled.is_set(), timeout=5, what="b swept")
    for config in ("kubectl", "rest"):
        assert await built(config)
        assert (await a.store.get_buildconfig(NAMESPACE, config)).last_version == 1


def valid_condition(apiserver: FakeApiServer, name: str) -> dict[str, Any] | None:
    doc = apiserver.get(BCS, NAMESPACE, name)
    assert doc is not None
    for condition in (doc.get("status") or {}).get("conditions") or []:
        if condition.get("type") == buildconfigs.VALID_CONDITION:
            return dict(condition)
    return None


async def test_a_config_triggerd_cannot_parse_says_so_in_its_status(
    make_node: Callable[..., Awaitable[Node]], apiserver: FakeApiServer
) -> None:
    """kubectl skips triggerd's validation: the leader puts what is wrong into the
    config's status (kubectl describe shows it), builds nothing from it, and clears the
    condition once the config is fixed."""
    a, b = await leader_and_follower(make_node)
    bad = applied("broken", run_policy="Sometimes", triggers=[{"type": "ConfigChange"}])
    apiserver.put(BCS, bad)
    condition = await async_wait_for(
        lambda: valid_condition(apiserver, "broken"), timeout=10, what="condition"
    )
    assert condition["status"] == "False" and condition["reason"] == "InvalidBuildConfig"
    assert "spec.runPolicy" in condition["message"]
    assert (a.engine._watched.get((NAMESPACE, "broken"))) is None
    fixed = apiserver.get(BCS, NAMESPACE, "broken")
    assert fixed is not None
    fixed["spec"]["runPolicy"] = "Serial"
    apiserver.put(BCS, fixed)
    await async_wait_for(
        lambda: valid_condition(apiserver, "broken") is None, timeout=10, what="cleared"
    )

    async def first_build() -> list[str]:
        page = await b.store.list_builds(BuildQuery(namespace=NAMESPACE, config_name="broken"))
        return [build.name for build in page.builds]

    # accepted now: its ConfigChange build starts, once
    await async_wait_for(first_build, timeout=10, what="broken-1")
    assert await first_build() == ["broken-1"]


class RefusingHooks:
    """Image change hooks whose checks refuse configs named "loop" (a build cycle)."""

    async def check_buildconfig(self, config: buildconfigs.BuildConfig) -> None:
        if config.name == "loop":
            problem = FieldError("spec.triggers", "the triggers form a build cycle")
            raise Invalid(buildconfigs.KIND, config.name, [problem])

    async def config_changed(self, config: buildconfigs.BuildConfig, *, created: bool) -> None:
        return None

    async def config_deleted(self, namespace: str, name: str) -> None:
        return None

    async def build_finished(self, build: builds.Build) -> None:
        return None

    async def resolve_request(
        self,
        namespace: str,
        name: str,
        request: requests.BuildRequest,
        config: buildconfigs.BuildConfig | None = None,
    ) -> requests.BuildRequest:
        return request

    async def status_entries(self, config: buildconfigs.BuildConfig) -> list[dict[str, Any]]:
        return []


async def test_a_config_the_checks_refuse_says_so_in_its_status(
    make_node: Callable[..., Awaitable[Node]], apiserver: FakeApiServer
) -> None:
    """The checks the REST API runs before storing (ImageChange cycles) run for kubectl
    configs on the leader; the answer is in the config's status."""
    a, _ = await leader_and_follower(make_node)
    a.engine.image_change = RefusingHooks()
    apiserver.put(BCS, applied("loop"))
    apiserver.put(BCS, applied("fine"))
    condition = await async_wait_for(
        lambda: valid_condition(apiserver, "loop"), timeout=10, what="condition"
    )
    assert "build cycle" in condition["message"]
    await async_wait_for(
        lambda: (NAMESPACE, "fine") in a.engine._watched, timeout=10, what="fine seen"
    )
    assert valid_condition(apiserver, "fine") is None
