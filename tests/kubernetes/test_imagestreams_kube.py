"""Image streams and image trigger states in Kubernetes mode, on the fake API server.

The store (``imagestreams.triggerd.dev`` resources and the BuildConfigs'
``status.imageChangeTriggers``) written by two clients at once, conflicts included; the CRD
and an OpenShift-shaped ImageStream checked with the schema checker; and two replicas (each
its own Kube client, KubernetesStore, elector, engine and image change runtime, wired as
``triggerd serve`` wires them, with the fake executor ending builds): what the leader
records is served by the follower's ImageStream API, a new leader keeps the history and
builds nothing twice, first sightings and trigger messages are shared, and an image
recorded while nobody leads is built by the next leader.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc, istag
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.crd_schema import crd_schema, problems, structural_problems
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_replicas import leader_and_follower
from tests.support.processes import async_wait_for
from triggerd import errors
from triggerd.engine import Engine, StartRequest
from triggerd.executors import base as executors
from triggerd.imagechange import TriggerState
from triggerd.imagechange_runtime import ImageChangeRuntime, create_runtime
from triggerd.images.streams_base import ImportFailure
from triggerd.images.streams_kubernetes import (
    KubernetesStreamsStore,
    StreamEvent,
    stream_from_resource,
    stream_to_resource,
)
from triggerd.kube import Kube, KubernetesSettings
from triggerd.leader import LeaderElector
from triggerd.logs import LogStore
from triggerd.model import buildconfigs, imagestreams, requests
from triggerd.model.builds import Build
from triggerd.settings import RegistrySettings, Settings
from triggerd.store.base import BuildQuery
from triggerd.store.kubernetes import KubernetesStore
from triggerd.web import imagestreams as web_streams
from triggerd.web import registry_hooks
from triggerd.web.app import make_app

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
CRD = yaml.safe_load((MANIFESTS / "base/crd-imagestreams.yaml").read_text(encoding="utf-8"))
SCHEMA = crd_schema(CRD)
BC_SCHEMA = crd_schema(
    yaml.safe_load((MANIFESTS / "base/crd-buildconfigs.yaml").read_text(encoding="utf-8"))
)
STREAMS = ("triggerd.dev/v1", "imagestreams")
BCS = ("triggerd.dev/v1", "buildconfigs")
REGISTRY = "registry.example.com:5000"
TOKEN = "imagestreams-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STREAM_API = f"/apis/image.openshift.io/v1/namespaces/{NAMESPACE}/imagestreams"
BC_API = f"/apis/build.openshift.io/v1/namespaces/{NAMESPACE}/buildconfigs"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stream_doc(name: str = "base", tags: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An ImageStream as a client of the REST API sends it."""
    return {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "tags": tags
            if tags is not None
            else [
                {
                    "name": "latest",
                    "from": {"kind": "DockerImage", "name": "docker.io/library/busybox:1.36"},
                    "importPolicy": {"scheduled": True, "pollInterval": "30s"},
                }
            ]
        },
    }


def event(digest: str, minutes: int = 0, stream: str = "base") -> imagestreams.TagEvent:
    return imagestreams.TagEvent(
        docker_image_reference=f"{REGISTRY}/{NAMESPACE}/{stream}@{digest}",
        image=digest,
        created=T0 + timedelta(minutes=minutes),
    )


def stored(apiserver: FakeApiServer, name: str) -> dict[str, Any]:
    doc = apiserver.get(STREAMS, NAMESPACE, name)
    assert doc is not None
    return doc


def assert_stored_objects_valid(apiserver: FakeApiServer) -> None:
    """What the store wrote is kept as written by a real API server (no field pruned)."""
    for doc in apiserver.list(STREAMS):
        assert problems(doc, SCHEMA) == [], doc
    for doc in apiserver.list(BCS):
        assert problems(doc, BC_SCHEMA) == [], doc


@pytest.fixture
async def two_stores(
    kube: Kube, kube_settings: KubernetesSettings
) -> AsyncIterator[tuple[KubernetesStreamsStore, KubernetesStreamsStore]]:
    """The stores of two replicas: one Kube client each."""
    other = Kube(settings=kube_settings)
    first = KubernetesStreamsStore(kube, NAMESPACE, registry=REGISTRY)
    second = KubernetesStreamsStore(other, NAMESPACE, registry=REGISTRY)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await other.close()


# The store ------------------------------------------------------------------------------------


async def test_streams_history_and_conditions_are_one_resource_both_replicas_read(
    two_stores: tuple[KubernetesStreamsStore, KubernetesStreamsStore], apiserver: FakeApiServer
) -> None:
    a, b = two_stores
    created = await a.create_stream(imagestreams.parse(stream_doc()), now=T0)
    assert created.meta.uid and created.meta.resource_version
    resource = stored(apiserver, "base")
    assert resource["apiVersion"] == "triggerd.dev/v1" and "status" not in resource
    with pytest.raises(errors.AlreadyExists):
        await b.create_stream(imagestreams.parse(stream_doc()), now=T0)

    stream, changed = await a.record_tag(NAMESPACE, "base", "latest", event(D1))
    assert changed and stream.latest("latest") == dataclasses.replace(event(D1), generation=1)
    version = stored(apiserver, "base")["metadata"]["resourceVersion"]
    _, again = await b.record_tag(NAMESPACE, "base", "latest", event(D1, 5))
    assert not again
    assert stored(apiserver, "base")["metadata"]["resourceVersion"] == version  # no write

    # A tag whose import failed and never succeeded: a condition and no items.
    failure = ImportFailure(tag="edge", reason="NotFound", message="no such tag", time=T0)
    await b.set_import_failure(NAMESPACE, "base", "edge", failure)
    version = stored(apiserver, "base")["metadata"]["resourceVersion"]
    later = ImportFailure(
        tag="edge", reason="NotFound", message="no such tag", time=T0 + timedelta(1)
    )
    await a.set_import_failure(NAMESPACE, "base", "edge", later)
    assert stored(apiserver, "base")["metadata"]["resourceVersion"] == version  # the same
    assert await a.import_failures(NAMESPACE, "base") == {"edge": failure}
    assert stored(apiserver, "base")["status"] == {
        "dockerImageRepository": f"{REGISTRY}/{NAMESPACE}/base",
        "tags": [
            {"tag": "edge", "items": [], "conditions": [failure.to_condition()]},
            {"tag": "latest", "items": [event(D1).to_dict() | {"generation": 1}]},
        ],
    }
    # A record keeps the conditions; the history is what the other replica reads.
    await b.record_tag(NAMESPACE, "base", "latest", event(D2, 1))
    assert await a.import_failures(NAMESPACE, "base") == {"edge": failure}
    seen = await a.get_stream(NAMESPACE, "base")
    assert [i.image for i in seen.history["latest"]] == [D2, D1]
    await a.set_import_failure(NAMESPACE, "base", "edge", None)
    assert await b.import_failures(NAMESPACE, "base") == {}

    # A user's replace: a stale resourceVersion conflicts; otherwise the history stays.
    with pytest.raises(errors.Conflict):
        await b.replace_stream(created, expected_resource_version=created.meta.resource_version)
    replaced = await b.replace_stream(imagestreams.parse(stream_doc(tags=[])))
    assert replaced.tags == ()
    assert [i.image for i in replaced.history["latest"]] == [D2, D1]
    # the smallest stream a client may send: no spec at all
    bare = await a.create_stream(
        imagestreams.parse({"metadata": {"name": "bare", "namespace": NAMESPACE}}), now=T0
    )
    assert bare.tags == () and stored(apiserver, "bare")["spec"] == {}
    assert [s.name for s in await a.list_streams()] == ["bare", "base"]
    assert_stored_objects_valid(apiserver)
    await a.delete_stream(NAMESPACE, "base")
    with pytest.raises(errors.NotFound):
        await b.get_stream(NAMESPACE, "base")
    with pytest.raises(errors.NotFound):
        await b.record_tag(NAMESPACE, "base", "latest", event(D3))
    await b.set_import_failure(NAMESPACE, "base", "latest", failure)  # gone: nothing kept


async def test_a_record_that_loses_a_race_is_made_again_on_the_newer_stream(
    two_stores: tuple[KubernetesStreamsStore, KubernetesStreamsStore],
    apiserver: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replica a reads the stream, then replica b records an image before a writes: a's
    write carries the old resourceVersion, gets 409, and a records again on b's result.
    Then forty records of both replicas at once (eight per tag, within the history limit):
    every one is in the history."""
    a, b = two_stores
    await a.create_stream(imagestreams.parse(stream_doc()), now=T0)
    patch = a.kube.merge_patch
    interfered: list[str] = []

    async def b_writes_first(path: str, body: Any) -> dict[str, Any]:
        if not interfered:
            interfered.append(path)
            await b.record_tag(NAMESPACE, "base", "latest", event(D2))
        return await patch(path, body)

    monkeypatch.setattr(a.kube, "merge_patch", b_writes_first)
    before = len(apiserver.calls.patch_content_types)
    stream, changed = await a.record_tag(NAMESPACE, "base", "latest", event(D1, 1))
    assert changed
    assert [(i.image, i.generation) for i in stream.history["latest"]] == [(D1, 2), (D2, 1)]
    # b's write, a's refused one, a's second
    assert len(apiserver.calls.patch_content_types) - before == 3
    monkeypatch.undo()

    digests = [f"sha256:{n:064x}" for n in range(40)]
    await asyncio.gather(
        *(
            (a if n % 2 else b).record_tag(NAMESPACE, "base", f"t{n % 5}", event(d, n))
            for n, d in enumerate(digests)
        )
    )
    final = await b.get_stream(NAMESPACE, "base")
    for tag in ("t0", "t1", "t2", "t3", "t4"):
        items = final.history[tag]
        assert sorted(i.image for i in items) == sorted(digests[int(tag[1]) :: 5])
        assert sorted(i.generation for i in items) == list(range(1, 9))
    assert_stored_objects_valid(apiserver)


async def test_trigger_states_are_the_buildconfig_status(
    kube: Kube,
    two_stores: tuple[KubernetesStreamsStore, KubernetesStreamsStore],
    apiserver: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Written by one replica into ``status.imageChangeTriggers`` (OpenShift's place),
    read by the other; a build's lastVersion bump between the read and the write is
    kept (409, read again); the same states again write nothing."""
    a, b = two_stores
    doc = image_config_doc(
        "app",
        base=istag("base:latest"),
        triggers=[
            {"type": "ImageChange", "imageChange": {}},
            {"type": "ImageChange", "imageChange": {"from": docker_ref("busybox:1.36")}},
        ],
    )
    doc["metadata"]["namespace"] = NAMESPACE
    await KubernetesStore(kube, NAMESPACE).create_buildconfig(buildconfigs.parse(doc))
    states = [
        TriggerState(index=0, last_triggered_image_id=f"{REGISTRY}/x@{D1}", last_trigger_time=T0),
        TriggerState(index=1, message="unauthorized: authentication required", await_first=True),
    ]
    patch = a.kube.merge_patch

    async def a_build_is_numbered_first(path: str, body: Any) -> dict[str, Any]:
        current = apiserver.get(BCS, NAMESPACE, "app")
        assert current is not None
        if (current.get("status") or {}).get("lastVersion", 0) == 0:
            current.setdefault("status", {})["lastVersion"] = 1
            apiserver.put(BCS, current)
        return await patch(path, body)

    monkeypatch.setattr(a.kube, "merge_patch", a_build_is_numbered_first)
    await a.put_trigger_states(NAMESPACE, "app", states)
    monkeypatch.undo()
    status = stored_bc(apiserver)["status"]
    assert status["lastVersion"] == 1
    assert status["imageChangeTriggers"] == [
        {
            "from": {"name": "base:latest", "namespace": NAMESPACE},
            "lastTriggeredImageID": f"{REGISTRY}/x@{D1}",
            "lastTriggerTime": "2026-01-01T00:00:00Z",
        },
        {"from": {"name": "busybox:1.36"}, "message": "unauthorized: authentication required"},
    ]
    # await_first has no field in OpenShift's shape: the runtime derives it from builds
    assert await b.trigger_states(NAMESPACE, "app") == {
        0: states[0],
        1: TriggerState(index=1, message="unauthorized: authentication required"),
    }
    # one state changes, the other stays
    await b.put_trigger_states(NAMESPACE, "app", [TriggerState(index=1)])
    read = await a.trigger_states(NAMESPACE, "app")
    assert read == {0: states[0], 1: TriggerState(index=1)}
    version = stored_bc(apiserver)["metadata"]["resourceVersion"]
    await a.put_trigger_states(NAMESPACE, "app", read.values())
    assert stored_bc(apiserver)["metadata"]["resourceVersion"] == version  # nothing written
    assert_stored_objects_valid(apiserver)
    # a config that does not exist has no states and keeps none
    assert await a.trigger_states(NAMESPACE, "nope") == {}
    await a.put_trigger_states(NAMESPACE, "nope", states)
    assert apiserver.get(BCS, NAMESPACE, "nope") is None


def stored_bc(apiserver: FakeApiServer, name: str = "app") -> dict[str, Any]:
    doc = apiserver.get(BCS, NAMESPACE, name)
    assert doc is not None
    return doc


async def test_the_watch_reports_every_change_and_relists_after_410(
    two_stores: tuple[KubernetesStreamsStore, KubernetesStreamsStore], apiserver: FakeApiServer
) -> None:
    a, b = two_stores
    await a.create_stream(imagestreams.parse(stream_doc("one")), now=T0)
    events: asyncio.Queue[StreamEvent] = asyncio.Queue()

    async def follow() -> None:
        async for item in b.watch_streams(timeout_seconds=1):
            await events.put(item)

    async def next_event() -> StreamEvent:
        async with asyncio.timeout(10):
            return await events.get()

    task = asyncio.create_task(follow())
    try:
        first = await next_event()
        assert (first.type, first.name) == ("ADDED", "one") and first.stream is not None
        await a.record_tag(NAMESPACE, "one", "latest", event(D1, stream="one"))
        changed = await next_event()
        assert changed.type == "MODIFIED" and changed.stream is not None
        assert changed.stream.latest("latest") is not None
        apiserver.compact()  # the watch's resourceVersion is gone: it lists again
        await a.create_stream(imagestreams.parse(stream_doc("two")), now=T0)
        await a.delete_stream(NAMESPACE, "one")
        seen = {(e.type, e.name) for e in [await next_event(), await next_event()]}
        assert seen == {("ADDED", "two"), ("DELETED", "one")}
        assert apiserver.calls.gone >= 1
        # kubectl stores what triggerd cannot read: reported without a stream
        bad = stream_doc("bad", tags=[{"name": "x", "importPolicy": {"scheduled": True}}])
        bad["apiVersion"] = "triggerd.dev/v1"
        apiserver.put(STREAMS, bad)
        unreadable = await next_event()
        assert (unreadable.type, unreadable.name, unreadable.stream) == ("ADDED", "bad", None)
        assert [s.name for s in await a.list_streams()] == ["two"]  # skipped in lists
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_without_the_crd_the_runtime_says_what_to_apply_and_starts_once_it_is_there(
    kube: Kube, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.unserved.add(STREAMS)
    logs = LogStore(tmp_path / "logs")
    engine = Engine(
        settings=Settings(data_dir=tmp_path, store="kubernetes"),
        store=KubernetesStore(kube, NAMESPACE),
        executor=FakeExecutor(logs),
        logs=logs,
    )
    runtime = create_runtime(engine)
    assert isinstance(runtime.streams, KubernetesStreamsStore) and runtime.shared
    with pytest.raises(errors.PermanentError, match=r"imagestreams\.triggerd\.dev.*manifests/"):
        await runtime.start(poll=False)
    apiserver.unserved.clear()
    await runtime.start(poll=False)  # opened now: the first failure was not remembered
    try:
        assert await runtime.streams.list_streams() == []
    finally:
        await runtime.stop()


# The CRD ---------------------------------------------------------------------------------------

#: An ImageStream as ``oc get is -o yaml`` shows it (openshift/api image/v1 types: null
#: annotations and generation, a referencePolicy, an import condition), under triggerd.dev.
EXAMPLE = yaml.safe_load(
    f"""
apiVersion: triggerd.dev/v1
kind: ImageStream
metadata:
  name: ruby
  namespace: {NAMESPACE}
spec:
  lookupPolicy:
    local: false
  tags:
  - name: "3.3"
    annotations: null
    from:
      kind: DockerImage
      name: registry.access.redhat.com/ubi9/ruby-33:latest
    generation: null
    importPolicy:
      scheduled: true
      importMode: Legacy
      pollInterval: 10m
    referencePolicy:
      type: Source
  - name: latest
    annotations:
      description: the newest Ruby
    from:
      kind: DockerImage
      name: registry.access.redhat.com/ubi9/ruby-33:latest
    importPolicy: {{}}
    referencePolicy:
      type: Local
status:
  dockerImageRepository: {REGISTRY}/{NAMESPACE}/ruby
  tags:
  - tag: "3.3"
    items:
    - created: "2026-01-02T03:04:05Z"
      dockerImageReference: registry.access.redhat.com/ubi9/ruby-33@{D2}
      generation: 2
      image: {D2}
    - created: "2026-01-01T03:04:05Z"
      dockerImageReference: registry.access.redhat.com/ubi9/ruby-33@{D1}
      generation: 1
      image: {D1}
  - tag: latest
    items: null
    conditions:
    - type: ImportSuccess
      status: "False"
      reason: Unauthorized
      message: "unauthorized: authentication required"
      lastTransitionTime: "2026-01-02T03:04:05Z"
      generation: 1
"""
)


def test_the_crd_is_structural_closed_and_named_as_openshift_names_it() -> None:
    assert CRD["metadata"]["name"] == "imagestreams.triggerd.dev"
    assert CRD["spec"]["scope"] == "Namespaced"
    assert CRD["spec"]["names"]["kind"] == "ImageStream"
    assert CRD["spec"]["names"]["shortNames"] == ["is"]
    (version,) = CRD["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert structural_problems(SCHEMA) == []
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Image Repository": ("string", ".status.dockerImageRepository"),
        "Latest": (
            "string",
            '.status.tags[?(@.tag=="latest")].items[0].dockerImageReference',
        ),
        "Age": ("date", ".metadata.creationTimestamp"),
    }
    status = SCHEMA["properties"]["status"]["properties"]
    assert status["dockerImageRepository"]["type"] == "string"
    item = status["tags"]["items"]["properties"]["items"]["items"]["properties"]
    assert item["dockerImageReference"]["type"] == "string"


def test_an_openshift_imagestream_validates_and_reads_back_without_loss() -> None:
    assert problems(EXAMPLE, SCHEMA) == []
    stream = stream_from_resource(EXAMPLE)
    assert [t.name for t in stream.tags] == ["3.3", "latest"]
    assert stream.tags[0].scheduled and stream.tags[0].interval == 600.0
    assert [i.image for i in stream.history["3.3"]] == [D2, D1]
    written = stream_to_resource(stream)
    assert problems(written, SCHEMA) == []
    assert written["spec"] == EXAMPLE["spec"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["spec"]["tags"].append({"name": "latest"}), "duplicate entries"),
        (lambda d: d["spec"]["tags"][0].update(bogus=1), "bogus: not in the schema"),
        (lambda d: d["spec"]["tags"][0].pop("name"), "name is required"),
        (lambda d: d["status"]["tags"][1]["conditions"][0].update(status="Maybe"), "'Maybe'"),
        (lambda d: d["status"]["tags"][0]["items"][0].update(created="now"), "RFC 3339"),
        (lambda d: d["spec"]["tags"][0]["importPolicy"].update(pollInterval=1.5), "integer or"),
    ],
)
def test_the_schema_refuses_what_the_api_server_would(mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(EXAMPLE)
    mutate(doc)
    found = problems(doc, SCHEMA)
    assert any(expected in p for p in found), found


# Two replicas ----------------------------------------------------------------------------------


class Replica:
    """One triggerd replica wired as ``triggerd serve`` wires it in Kubernetes mode, except
    that the fake executor ends its builds (what matters here is which builds start, what
    they are pinned to and what the streams record)."""

    def __init__(
        self,
        name: str,
        kube_settings: KubernetesSettings,
        tmp: Path,
        *,
        initial_build: bool,
        **settings: Any,
    ) -> None:
        self.name = name
        self.kube = Kube(settings=kube_settings)
        self.settings = Settings(
            data_dir=tmp / name, store="kubernetes", kubernetes=kube_settings,
            api_tokens=(TOKEN,), image_stream_registry=REGISTRY,
            image_change_initial_build=initial_build, **settings,
        )  # fmt: skip
        self.logs = LogStore(tmp / name / "logs")
        self.store = KubernetesStore(self.kube, NAMESPACE, secret_cache_seconds=0.5)
        self.elector = LeaderElector(
            self.kube, namespace=NAMESPACE, name="triggerd-leader", identity=name,
            lease_duration_seconds=kube_settings.lease_duration_seconds,
            renew_interval_seconds=kube_settings.renew_interval_seconds,
        )  # fmt: skip
        self.executor = FakeExecutor(self.logs)
        self.engine = Engine(
            settings=self.settings, store=self.store, executor=self.executor, logs=self.logs,
            leadership=self.elector,
        )  # fmt: skip
        self.runtime: ImageChangeRuntime = create_runtime(
            self.engine, stream_registry=REGISTRY, initial_build=initial_build
        )
        self.engine.image_change = self.runtime
        runtime, engine = self.runtime, self.engine

        async def on_leadership(leading: bool) -> None:
            await engine.on_leadership(leading)
            await runtime.on_leadership(leading)

        self.elector.on_change = on_leadership
        self.app = make_app(self.engine, self.logs, self.settings, extra_routes=web_streams.ROUTES)
        self.app[registry_hooks.IMAGE_CHANGE] = self.runtime

        async def start_runtime(_app: Any) -> None:
            await runtime.start(poll=False)

        async def stop_runtime(_app: Any) -> None:
            await runtime.stop()

        self.app.on_startup.append(start_runtime)
        self.app.on_cleanup.insert(0, stop_runtime)
        self.client: TestClient[Any, Any] | None = None
        self._stopped = False

    @property
    def http(self) -> TestClient[Any, Any]:
        assert self.client is not None
        return self.client

    async def start(self, aiohttp_client: AiohttpClient) -> None:
        self.client = await aiohttp_client(TestServer(self.app))
        self.elector.start()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.elector.stop()
        await self.http.close()
        await self.kube.close()

    async def crash(self) -> None:
        """The process dies: no release of the Lease, nothing more from it."""
        assert self.elector._task is not None
        self.elector._task.cancel()
        await self.runtime.stop()
        await self.engine.stop()

    async def builds(self, config: str) -> list[Build]:
        page = await self.store.list_builds(BuildQuery(namespace=NAMESPACE, config_name=config))
        return list(page.builds)

    async def finish(self, build: str, digest: str) -> None:
        """Let the build (handed to this replica's executor) end pushing ``digest``."""
        await self.executor.wait_started(NAMESPACE, build)
        self.executor.finish(
            NAMESPACE,
            build,
            executors.Succeeded(digest=digest, image_reference=f"{REGISTRY}/{NAMESPACE}/x"),
        )


@pytest.fixture
async def make_replica(
    kube_settings: KubernetesSettings, tmp_path: Path, aiohttp_client: AiohttpClient
) -> AsyncIterator[Callable[..., Awaitable[Replica]]]:
    replicas: list[Replica] = []

    async def make(name: str, *, initial_build: bool = True, **settings: Any) -> Replica:
        replica = Replica(name, kube_settings, tmp_path, initial_build=initial_build, **settings)
        replicas.append(replica)
        await replica.start(aiohttp_client)
        return replica

    yield make
    for replica in replicas:
        await replica.stop()


async def add_chain(via: Replica, *, app_output: dict[str, str] | None = None) -> None:
    """Through ``via``'s REST API: stream ``base``; config ``base`` (no triggers, output
    ImageStreamTag base:latest); config ``app`` FROM base:latest with an ImageChange
    trigger."""
    reply = await via.http.post(STREAM_API, json=stream_doc(tags=[{"name": "latest"}]),
                                headers=AUTH)  # fmt: skip
    assert reply.status == 201, await reply.text()
    base = image_config_doc(
        "base", base=docker_ref("docker.io/library/busybox:1.36"), triggers=[],
        output=istag("base:latest"),
    )  # fmt: skip
    app = image_config_doc("app", base=istag("base:latest"), output=app_output)
    for doc in (base, app):
        doc["metadata"]["namespace"] = NAMESPACE
        reply = await via.http.post(BC_API, json=doc, headers=AUTH)
        assert reply.status == 201, await reply.text()


async def start_base(via: Replica) -> str:
    start = StartRequest(namespace=NAMESPACE, config_name="base", request=requests.BuildRequest())
    (build,) = (await via.engine.start_builds([start])).builds
    return build.name


def pin(build: Build) -> str:
    docker = build.spec.strategy.docker
    assert docker is not None and docker.from_image is not None
    return docker.from_image.name


def base_image(digest: str) -> str:
    return f"{REGISTRY}/{NAMESPACE}/base@{digest}"


async def served_stream(replica: Replica, name: str = "base") -> dict[str, Any]:
    reply = await replica.http.get(f"{STREAM_API}/{name}", headers=AUTH)
    assert reply.status == 200, await reply.text()
    doc: dict[str, Any] = await reply.json()
    return doc


def history(doc: dict[str, Any], tag: str = "latest") -> list[str]:
    for entry in doc["status"]["tags"]:
        if entry["tag"] == tag:
            return [item["image"] for item in entry["items"] or []]
    return []


async def test_a_build_output_the_leader_records_is_served_by_the_follower(
    make_replica: Callable[..., Awaitable[Replica]], apiserver: FakeApiServer
) -> None:
    """The stream is created through the follower's API; the leader runs base-1, records
    its digest in the stream and starts app-1 pinned to it; the follower's ImageStream API
    and its BuildConfig API (status.imageChangeTriggers) show what the leader wrote."""
    a, b = await leader_and_follower(make_replica)
    await add_chain(b)
    # both replicas see the one stream
    await async_wait_for(
        lambda: (NAMESPACE, "base") in a.runtime._seen_streams, timeout=10, what="a sees it"
    )
    assert [s.name for s in await a.runtime.streams.list_streams()] == ["base"]
    name = await start_base(b)  # a webhook on the follower
    await a.finish(name, D1)
    (app_1,) = await async_wait_for(
        lambda: a.builds("app"), timeout=10, what="app built on base's image"
    )
    assert pin(app_1) == base_image(D1)
    assert app_1.triggered_by[0]["imageChangeBuild"]["imageID"] == base_image(D1)

    doc = await served_stream(b)
    assert doc["apiVersion"] == "image.openshift.io/v1"
    assert history(doc) == [D1]
    assert doc["status"]["dockerImageRepository"] == f"{REGISTRY}/{NAMESPACE}/base"
    assert doc["status"]["tags"][0]["items"][0]["dockerImageReference"] == base_image(D1)
    listed = await (await b.http.get(STREAM_API, headers=AUTH)).json()
    assert [history(item) for item in listed["items"]] == [[D1]]
    config = await (await b.http.get(f"{BC_API}/app", headers=AUTH)).json()
    (trigger,) = config["status"]["imageChangeTriggers"]
    assert trigger["lastTriggeredImageID"] == base_image(D1)
    assert stored_bc(apiserver)["status"]["imageChangeTriggers"][0]["lastTriggeredImageID"] == (
        base_image(D1)
    )
    assert not b.executor.running  # the follower runs nothing
    assert_stored_objects_valid(apiserver)


async def test_a_new_leader_keeps_the_history_and_builds_nothing_twice(
    make_replica: Callable[..., Awaitable[Replica]], apiserver: FakeApiServer
) -> None:
    """a builds base and app on it; a steps down (SIGTERM); b leads, catches up on every
    config watching a stream (nothing is new: nothing starts), then builds base-2, records
    it after base-1 and rebuilds app once on it. A third replica with an empty dataDir (a
    restart on an emptyDir) sees the whole history."""
    a, b = await leader_and_follower(make_replica)
    await add_chain(a)
    await a.finish(await start_base(a), D1)
    await async_wait_for(lambda: a.builds("app"), timeout=10, what="app-1")
    await a.finish("app-1", D3)

    await a.elector.stop()
    await async_wait_for(lambda: b.elector.is_leader, timeout=10, what="b leads")
    await async_wait_for(lambda: b.elector.settled.is_set(), timeout=10, what="b settled")
    await b.runtime.drain()  # its catch-up evaluated app against the stream
    assert len(await b.builds("app")) == 1 and len(await b.builds("base")) == 1
    assert history(await served_stream(b)) == [D1]

    await b.finish(await start_base(b), D2)
    apps = await async_wait_for(
        lambda: _at_least(b.builds("app"), 2), timeout=10, what="app rebuilt on base-2"
    )
    assert [pin(build) for build in apps] == [base_image(D1), base_image(D2)]
    assert history(await served_stream(b)) == [D2, D1]
    await b.runtime.drain()
    assert len(await b.builds("app")) == 2  # once

    c = await make_replica("c")  # a fresh dataDir: nothing local
    assert history(await served_stream(c)) == [D2, D1]
    config = await (await c.http.get(f"{BC_API}/app", headers=AUTH)).json()
    assert config["status"]["imageChangeTriggers"][0]["lastTriggeredImageID"] == base_image(D2)


async def _at_least(builds: Awaitable[list[Build]], count: int) -> list[Build] | None:
    found = await builds
    return found if len(found) >= count else None


async def test_first_sightings_and_trigger_messages_are_shared(
    make_replica: Callable[..., Awaitable[Replica]], apiserver: FakeApiServer
) -> None:
    """With imageChangeInitialBuild off the leader records the first image a trigger sees
    without building; the next leader knows it (so the next image does build, once), and
    the message of a trigger whose build could not be created (its output stream is
    missing) is shown by the follower's API."""
    a, b = await leader_and_follower(make_replica, initial_build=False)
    await add_chain(b)
    lost = image_config_doc("lost", base=istag("base:latest"), output=istag("missing:latest"))
    lost["metadata"]["namespace"] = NAMESPACE
    assert (await b.http.post(BC_API, json=lost, headers=AUTH)).status == 201
    # another replica's store records base's first image (as a previous leader would)
    await b.runtime.streams.record_tag(NAMESPACE, "base", "latest", event(D1))

    async def recorded() -> str | None:
        states = await b.runtime.streams.trigger_states(NAMESPACE, "app")
        return states[0].last_triggered_image_id if 0 in states else None

    assert await async_wait_for(recorded, timeout=10, what="first sighting") == base_image(D1)
    assert await a.builds("app") == []  # seen, not built

    await a.elector.stop()
    await async_wait_for(lambda: b.elector.is_leader, timeout=10, what="b leads")
    await async_wait_for(lambda: b.elector.settled.is_set(), timeout=10, what="b settled")
    await b.runtime.drain()
    assert await b.builds("app") == []  # b knows D1 was seen
    await b.runtime.streams.record_tag(NAMESPACE, "base", "latest", event(D2, 1))
    (app_1,) = await async_wait_for(lambda: b.builds("app"), timeout=10, what="app-1 on D2")
    assert pin(app_1) == base_image(D2)

    async def message() -> str | None:
        reply = await a.http.get(f"{BC_API}/lost", headers=AUTH)  # a no longer leads
        entries = (await reply.json())["status"].get("imageChangeTriggers") or [{}]
        text = entries[0].get("message")
        return text if isinstance(text, str) else None

    assert "InvalidOutputReference" in await async_wait_for(message, timeout=10, what="message")
    await b.runtime.drain()
    assert len(await b.builds("app")) == 1 and await b.builds("lost") == []
    assert_stored_objects_valid(apiserver)


async def test_an_image_recorded_while_nobody_leads_is_built_by_the_next_leader(
    make_replica: Callable[..., Awaitable[Replica]], apiserver: FakeApiServer
) -> None:
    """The leader dies right after base's image is recorded (before it could start app):
    the follower, once the Lease expires, catches up and builds app once on that image."""
    a, b = await leader_and_follower(make_replica)
    await add_chain(b)
    await async_wait_for(
        lambda: (NAMESPACE, "base") in a.runtime._seen_streams, timeout=10, what="a sees it"
    )
    await a.crash()
    assert not b.elector.is_leader
    await b.runtime.streams.record_tag(NAMESPACE, "base", "latest", event(D1))
    await b.runtime.drain()
    assert await b.builds("app") == []  # b follows: it does not act
    await async_wait_for(lambda: b.elector.is_leader, timeout=10, what="b leads")
    (app_1,) = await async_wait_for(lambda: b.builds("app"), timeout=10, what="app-1")
    assert pin(app_1) == base_image(D1)
    await b.runtime.drain()
    assert len(await b.builds("app")) == 1


async def test_an_import_asked_through_the_follower_is_made_once_by_the_leader(
    make_replica: Callable[..., Awaitable[Replica]],
    apiserver: FakeApiServer,
    aiohttp_server: Any,
) -> None:
    """A stream created through the follower's API names a registry tag: the leader (it
    sees the stream through its watch) imports it, once; the follower never asks the
    registry. A tag the registry does not have gets its ImportSuccess False condition,
    which the follower's API shows."""
    registry = CountingRegistry()
    server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
    host = f"127.0.0.1:{server.port}"
    digest = registry.push("team/base", "latest")
    a, b = await leader_and_follower(
        make_replica, registries={host: RegistrySettings(insecure=True)}
    )
    tags = [
        {"name": "latest", "from": {"kind": "DockerImage", "name": f"{host}/team/base:latest"}},
        {"name": "gone", "from": {"kind": "DockerImage", "name": f"{host}/team/gone:latest"}},
    ]
    reply = await b.http.post(STREAM_API, json=stream_doc(tags=tags), headers=AUTH)
    assert reply.status == 201, await reply.text()

    async def imported() -> dict[str, Any] | None:
        doc = await served_stream(b)
        failed = any(entry.get("conditions") for entry in doc["status"]["tags"])
        return doc if history(doc) and failed else None

    doc = await async_wait_for(imported, timeout=10, what="the leader's import")
    assert history(doc) == [digest]
    assert doc["status"]["tags"][1]["items"][0]["dockerImageReference"] == (
        f"{host}/team/base@{digest}"
    )
    (condition,) = doc["status"]["tags"][0]["conditions"]
    assert doc["status"]["tags"][0]["tag"] == "gone"
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "ImportSuccess", "False", "NotFound",
    )  # fmt: skip
    await a.runtime.drain()
    await b.runtime.drain()
    assert registry.counts["HEAD"] == 2  # one per tag, by the leader
    assert_stored_objects_valid(apiserver)


async def test_an_output_the_old_leader_did_not_record_is_recorded_by_the_next(
    make_replica: Callable[..., Awaitable[Replica]],
    apiserver: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """base-1 ends Complete but its leader goes away before recording the image in the
    stream (the two writes are not one transaction): the next leader records it, and app
    is built on it, once."""
    a, b = await leader_and_follower(make_replica)
    await add_chain(a)

    async def went_away(build: Build) -> None:
        return None

    monkeypatch.setattr(a.runtime, "build_finished", went_away)
    name = await start_base(a)
    await a.finish(name, D1)

    async def complete() -> bool:
        return (await b.store.get_build(NAMESPACE, name)).status.output_digest == D1

    await async_wait_for(complete, timeout=10, what="base-1 complete")
    assert history(await served_stream(b)) == []
    await a.elector.stop()
    await async_wait_for(lambda: b.elector.is_leader, timeout=10, what="b leads")
    (app_1,) = await async_wait_for(lambda: b.builds("app"), timeout=10, what="app-1")
    assert pin(app_1) == base_image(D1)
    assert history(await served_stream(b)) == [D1]
    await b.runtime.drain()
    assert len(await b.builds("app")) == 1
