"""The image change runtime with the real engine, SQLite stores and a counting registry:
one build per new digest, dedup of repeats, chains through image streams, the hook API."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc, istag
from triggerd import metrics
from triggerd.engine import Engine
from triggerd.errors import Invalid
from triggerd.executors import base as executors
from triggerd.image_events import ImagePush, RegistryKind
from triggerd.imagechange_runtime import ImageChangeRuntime, create_runtime, registry_access
from triggerd.images.registry_client import RegistryClient
from triggerd.images.streams_store import StreamsStore
from triggerd.logs import LogStore
from triggerd.model import buildconfigs
from triggerd.model.builds import Build
from triggerd.settings import RegistrySettings, Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore
from triggerd.web import app as web_app
from triggerd.web import imagestreams as web_streams
from triggerd.web import registry_hooks

NS = "default"
HOOK_AUTH = "Bearer hook-secret"


@dataclass
class World:
    engine: Engine
    executor: FakeExecutor
    runtime: ImageChangeRuntime
    registry: CountingRegistry
    host: str

    async def builds(self, config: str) -> list[Build]:
        page = await self.engine.store.list_builds(BuildQuery(namespace=NS, config_name=config))
        return list(page.builds)


Factory = Callable[..., Awaitable[World]]


@pytest.fixture
async def world(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Factory]:
    started: list[tuple[Engine, ImageChangeRuntime, aiohttp.ClientSession]] = []

    async def make(
        *, initial_build: bool = True, monotonic: Callable[[], float] = time.monotonic
    ) -> World:
        registry = CountingRegistry()
        server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
        host = f"127.0.0.1:{server.port}"
        logs = LogStore(tmp_path / "logs")
        executor = FakeExecutor(logs)
        settings = Settings(
            data_dir=tmp_path,
            registry_notifications={
                "distribution": {"authorization": HOOK_AUTH},
                "dockerhub": {"token": "hub-token"},
            },
        )
        engine = Engine(
            settings=settings,
            store=SqliteStore(tmp_path / "triggerd.db"),
            executor=executor,
            logs=logs,
        )
        await engine.start()
        session = aiohttp.ClientSession()
        runtime = ImageChangeRuntime(
            engine,
            streams=StreamsStore(tmp_path / "imagestreams.db"),
            client=RegistryClient(session, insecure=lambda h: True),
            initial_build=initial_build,
            stream_registry=host,
            monotonic=monotonic,
        )
        await runtime.start(poll=False)
        started.append((engine, runtime, session))
        return World(engine, executor, runtime, registry, host)

    yield make
    for engine, runtime, session in started:
        await runtime.stop()
        await engine.stop()
        await session.close()


async def add_config(w: World, doc: dict[str, Any]) -> None:
    config = await w.engine.create_buildconfig(doc)
    await w.runtime.check_buildconfig(config)
    await w.runtime.config_changed(config, created=True)


def push(
    w: World, repo: str, tag: str, digest: str | None, delivery_id: str | None = None
) -> ImagePush:
    return ImagePush(
        source=RegistryKind.DISTRIBUTION,
        delivery_id=delivery_id,
        registry=w.host,
        repository=repo,
        tag=tag,
        digest=digest,
    )


async def test_new_config_builds_once_when_its_image_resolves_then_once_per_digest(
    world: Factory,
) -> None:
    w = await world()
    first = w.registry.push("team/base", "latest")
    await add_config(w, image_config_doc("app", base=docker_ref(f"{w.host}/team/base:latest")))
    assert await w.builds("app") == []  # not resolved yet
    await w.runtime.watcher.run_cycle()
    (build,) = await w.builds("app")
    docker = build.spec.strategy.docker
    assert docker is not None and docker.from_image is not None
    assert docker.from_image.name == f"{w.host}/team/base@{first}"
    assert build.triggered_by[0]["imageChangeBuild"]["imageID"] == docker.from_image.name
    # Unchanged poll, and the registry's notification of the same manifest: nothing new.
    await w.runtime.watcher.run_cycle()
    await w.runtime.handle_push(push(w, "team/base", "latest", first), 0.0, trusted=True)
    assert len(await w.builds("app")) == 1
    second = w.registry.push("team/base", "latest")
    await w.runtime.handle_push(push(w, "team/base", "latest", second), 0.0, trusted=True)
    await w.runtime.handle_push(push(w, "team/base", "latest", second), 0.0, trusted=True)
    await w.runtime.watcher.run_cycle()
    builds = await w.builds("app")
    assert len(builds) == 2
    assert builds[1].spec.strategy.docker.from_image.name.endswith(second)  # type: ignore[union-attr]
    entries = await w.runtime.status_entries(await w.engine.store.get_buildconfig(NS, "app"))
    assert entries[0]["lastTriggeredImageID"] == f"{w.host}/team/base@{second}"
    assert "lastTriggerTime" in entries[0]


async def test_initial_build_off_records_without_building(world: Factory) -> None:
    w = await world(initial_build=False)
    w.registry.push("base", "latest")
    await add_config(w, image_config_doc("app", base=docker_ref(f"{w.host}/base:latest")))
    await w.runtime.watcher.run_cycle()
    assert await w.builds("app") == []
    w.registry.push("base", "latest")
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("app")) == 1


async def test_untrusted_hint_is_confirmed_with_head(world: Factory) -> None:
    w = await world()
    real = w.registry.push("base", "latest")
    await add_config(w, image_config_doc("app", base=docker_ref(f"{w.host}/base:latest")))
    forged = "sha256:" + "f" * 64
    await w.runtime.handle_push(push(w, "base", "latest", forged), 0.0, trusted=False)
    (build,) = await w.builds("app")
    assert build.spec.strategy.docker.from_image.name.endswith(real)  # type: ignore[union-attr]


async def test_two_triggers_moving_together_start_one_build(world: Factory) -> None:
    w = await world()
    w.registry.push("base", "latest")
    w.registry.push("tools", "v1")
    doc = image_config_doc(
        "app",
        base=docker_ref(f"{w.host}/base:latest"),
        triggers=[
            {"type": "ImageChange", "imageChange": {}},
            {"type": "ImageChange", "imageChange": {"from": docker_ref(f"{w.host}/tools:v1")}},
        ],
    )
    await add_config(w, doc)
    await w.runtime.watcher.run_cycle()
    (build,) = await w.builds("app")
    assert len(build.triggered_by) == 2


async def test_paused_config_starts_nothing(world: Factory) -> None:
    w = await world()
    w.registry.push("base", "latest")
    doc = image_config_doc(
        "app",
        base=docker_ref(f"{w.host}/base:latest"),
        annotations={"openshift.io/build-config.paused": "true"},
    )
    await add_config(w, doc)
    await w.runtime.watcher.run_cycle()
    assert await w.builds("app") == []


async def test_build_chain_through_an_image_stream_and_cycle_refusal(world: Factory) -> None:
    w = await world()
    w.registry.push("library/busybox", "latest")
    client = w.runtime.streams
    from triggerd.model import imagestreams

    await client.create_stream(
        imagestreams.parse({"metadata": {"name": "base"}, "spec": {}}), now=w.engine.clock()
    )
    await add_config(
        w,
        image_config_doc(
            "base",
            base=docker_ref(f"{w.host}/library/busybox:latest"),
            output=istag("base:latest"),
        ),
    )
    await add_config(
        w, image_config_doc("app", base=istag("base:latest"), output=istag("app:latest"))
    )
    await w.runtime.watcher.run_cycle()
    (base_build,) = await w.builds("base")
    assert await w.builds("app") == []  # the stream has no image yet
    digest = "sha256:" + "9" * 64
    w.executor.finish(NS, base_build.name, executors.Succeeded(digest=digest, image_reference=""))
    await w.executor.wait_started(NS, base_build.name)

    async def finished() -> Build:
        return await w.engine.store.get_build(NS, base_build.name)

    from tests.support.processes import async_wait_for

    async def complete() -> bool:
        return (await finished()).phase.terminal

    await async_wait_for(complete, timeout=10, what="base build to finish")
    await w.runtime.build_finished(await finished())
    (app_build,) = await w.builds("app")
    assert app_build.spec.strategy.docker.from_image.name == f"{w.host}/default/base@{digest}"  # type: ignore[union-attr]
    assert app_build.triggered_by[0]["imageChangeBuild"]["fromRef"]["kind"] == "ImageStreamTag"
    # Recording the same image again starts nothing.
    await w.runtime.build_finished(await finished())
    assert len(await w.builds("app")) == 1
    # base FROM app's output would close a loop: refused at apply time.
    looping = buildconfigs.parse(
        image_config_doc("loop", base=istag("app:latest"), output=istag("base:latest"))
    )
    with pytest.raises(Invalid, match=r"cycle: default/loop → default/app → default/loop"):
        await w.runtime.check_buildconfig(looping)


async def test_registry_hook_auth_parse_and_dedup(world: Factory) -> None:
    w = await world()
    digest = w.registry.push("base", "latest")
    await add_config(w, image_config_doc("app", base=docker_ref(f"{w.host}/base:latest")))
    logs = LogStore(Path(w.engine.settings.data_dir) / "weblogs")
    app = web_app.make_app(
        w.engine,
        logs,
        w.engine.settings,
        extra_routes=[*registry_hooks.ROUTES, *web_streams.ROUTES],
    )
    app[registry_hooks.IMAGE_CHANGE] = w.runtime
    # The engine is already started by the fixture; the app must not start it again.
    app.on_startup.clear()
    app.on_cleanup.clear()
    envelope = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "digest": digest,
                    "repository": "base",
                    "tag": "latest",
                },
                "request": {"host": w.host},
            }
        ]
    }
    body = json.dumps(envelope, indent=3).encode()
    dist = "application/vnd.docker.distribution.events.v1+json"
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        url = "/hooks/registry/distribution"
        r = await client.post(url, data=body, headers={"Content-Type": dist})
        assert r.status == 401
        r = await client.post(
            url, data=body, headers={"Content-Type": dist, "Authorization": "Bearer wrong"}
        )
        assert r.status == 401
        auth = {"Content-Type": dist, "Authorization": HOOK_AUTH}
        r = await client.post(url, data=b"{not json", headers=auth)
        assert r.status == 400
        for _ in range(3):  # the registry retrying
            r = await client.post(url, data=body, headers=auth)
            assert r.status == 202
        await w.runtime.drain()
        assert len(await w.builds("app")) == 1
        # Docker Hub: token in the URL; no digest, confirmed with HEAD (which finds the same).
        hub = {"push_data": {"tag": "latest"}, "repository": {"repo_name": "x/y"}}
        r = await client.post("/hooks/registry/dockerhub?token=nope", json=hub)
        assert r.status == 401
        r = await client.post("/hooks/registry/dockerhub?token=hub-token", json=hub)
        assert r.status == 202
        r = await client.post("/hooks/registry/quay?token=x", json={})
        assert r.status == 401  # not configured: refused
        r = await client.post("/hooks/registry/nexus", json={})
        assert r.status == 404
        # GitHub: HMAC with the secret of a GitHub trigger on a config watching the image.
        gh_doc = json.loads(
            (Path(__file__).parent / "data" / "github-package-container-tagged.json").read_bytes()
        )
        gh_body = json.dumps(gh_doc).encode()
        gh = {"X-GitHub-Event": "package", "Content-Type": "application/json"}
        r = await client.post("/hooks/registry/github", data=gh_body, headers=gh)
        assert r.status == 401
        # ImageStream API round trip.
        stream = {
            "apiVersion": "image.openshift.io/v1",
            "kind": "ImageStream",
            "metadata": {"name": "base"},
            "spec": {"tags": [{"name": "latest"}]},
        }
        api = "/apis/image.openshift.io/v1/namespaces/default/imagestreams"
        r = await client.post(api, json=stream)
        assert r.status == 401  # management API needs the bearer token like the rest


async def test_restart_with_the_same_stores_starts_nothing_new(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    registry = CountingRegistry()
    server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
    host = f"127.0.0.1:{server.port}"
    registry.push("base", "latest")
    counts: list[int] = []
    for _ in range(2):
        logs = LogStore(tmp_path / "logs")
        engine = Engine(
            settings=Settings(
                data_dir=tmp_path, registries={host: RegistrySettings(insecure=True)}
            ),
            store=SqliteStore(tmp_path / "triggerd.db"),
            executor=FakeExecutor(logs),
            logs=logs,
        )
        await engine.start()
        async with aiohttp.ClientSession() as session:
            runtime = create_runtime(engine, session)
            runtime.client = RegistryClient(session, insecure=lambda h: True)
            runtime.watcher._head = runtime.client.head_digest
            await runtime.start(poll=False)
            if not counts:
                config = await engine.create_buildconfig(
                    image_config_doc("app", base=docker_ref(f"{host}/base:latest"))
                )
                await runtime.config_changed(config, created=True)
            await runtime.watcher.run_cycle()
            page = await engine.store.list_builds(BuildQuery(namespace=NS, config_name="app"))
            counts.append(len(page.builds))
            await runtime.stop()
        await engine.stop()
    assert counts == [1, 1]
    assert (tmp_path / "imagestreams.db").exists()


def test_registry_access_reads_settings(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(
        json.dumps({"auths": {"reg.example:5000": {"username": "u", "password": "p"}}})
    )
    settings = Settings(
        data_dir=tmp_path,
        registries={
            "reg.example:5000": RegistrySettings(insecure=True, auth_file=str(auth_file)),
        },
    )
    insecure, credentials = registry_access(settings)
    assert insecure("reg.example:5000") and not insecure("other.example")
    found = credentials("reg.example:5000")
    assert found is not None and found.username == "u"
    assert credentials("other.example") is None


async def test_manual_builds_of_stream_based_configs_are_pinned(world: Factory) -> None:
    from triggerd.errors import Conflict
    from triggerd.model import imagestreams
    from triggerd.model.requests import BuildRequest

    w = await world()
    await w.engine.create_buildconfig(image_config_doc("app", base=istag("base:latest")))
    with pytest.raises(Conflict, match="does not exist"):
        await w.runtime.resolve_request(NS, "app", BuildRequest())
    await w.runtime.streams.create_stream(
        imagestreams.parse({"metadata": {"name": "base"}}), now=w.engine.clock()
    )
    with pytest.raises(Conflict, match="has no image yet"):
        await w.runtime.resolve_request(NS, "app", BuildRequest())
    image = f"{w.host}/default/base@sha256:" + "7" * 64
    await w.runtime.streams.record_tag(
        NS,
        "base",
        "latest",
        imagestreams.TagEvent(
            docker_image_reference=image, image="sha256:" + "7" * 64, created=w.engine.clock()
        ),
    )
    request = await w.runtime.resolve_request(NS, "app", BuildRequest())
    assert request.from_image is not None and request.from_image.name == image
    build = await w.engine.instantiate(NS, "app", request)
    assert build.spec.strategy.docker is not None
    assert build.spec.strategy.docker.from_image is not None
    assert build.spec.strategy.docker.from_image.name == image


async def test_a_callers_config_spares_the_store_read(
    world: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Webhooks pass the config they matched: resolving a delivery's request reads no
    config from the store (one read per delivery was a third of the intake rate)."""
    from triggerd.model.requests import BuildRequest

    w = await world()
    doc = image_config_doc("app", base=docker_ref(f"{w.host}/base:latest"))
    config = await w.engine.create_buildconfig(doc)
    reads: list[tuple[str, str]] = []
    original = w.engine.store.get_buildconfig

    async def counted(namespace: str, name: str) -> Any:
        reads.append((namespace, name))
        return await original(namespace, name)

    monkeypatch.setattr(w.engine.store, "get_buildconfig", counted)
    given = await w.runtime.resolve_request(NS, "app", BuildRequest(), config)
    assert reads == []
    read = await w.runtime.resolve_request(NS, "app", BuildRequest())
    assert reads == [(NS, "app")]
    assert given == read


async def test_hooks_called_before_start_only_index(tmp_path: Path, aiohttp_server: Any) -> None:
    """The engine applies BuildConfig files inside its own start(), before the runtime's."""
    registry = CountingRegistry()
    server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
    host = f"127.0.0.1:{server.port}"
    registry.push("base", "latest")
    logs = LogStore(tmp_path / "logs")
    engine = Engine(
        settings=Settings(data_dir=tmp_path, registries={host: RegistrySettings(insecure=True)}),
        store=SqliteStore(tmp_path / "triggerd.db"),
        executor=FakeExecutor(logs),
        logs=logs,
    )
    await engine.start()
    runtime = create_runtime(engine)
    try:
        config = await engine.create_buildconfig(
            image_config_doc("app", base=docker_ref(f"{host}/base:latest"))
        )
        await runtime.check_buildconfig(config)
        await runtime.config_changed(config, created=True)
        assert registry.counts["HEAD"] == 0  # nothing polled before start
        await runtime.start(poll=False)
        await runtime.watcher.run_cycle()
        page = await engine.store.list_builds(BuildQuery(namespace=NS, config_name="app"))
        assert len(page.builds) == 1
    finally:
        await runtime.stop()
        await engine.stop()


async def test_a_retried_event_for_an_older_digest_neither_builds_nor_regresses_state(
    world: Factory,
) -> None:
    w = await world()
    old = w.registry.push("base", "latest")
    await add_config(w, image_config_doc("app", base=docker_ref(f"{w.host}/base:latest")))
    await w.runtime.handle_push(push(w, "base", "latest", old, "event-1"), 0.0, trusted=True)
    new = w.registry.push("base", "latest")
    await w.runtime.handle_push(push(w, "base", "latest", new, "event-2"), 0.0, trusted=True)
    assert len(await w.builds("app")) == 2
    # The registry's delayed retry of the first push (same event id) arrives now.
    await w.runtime.handle_push(push(w, "base", "latest", old, "event-1"), 0.0, trusted=True)
    assert len(await w.builds("app")) == 2
    config = await w.engine.store.get_buildconfig(NS, "app")
    (entry,) = await w.runtime.status_entries(config)
    assert entry["lastTriggeredImageID"] == f"{w.host}/base@{new}"


async def test_a_tag_moved_back_to_an_earlier_digest_rebuilds(world: Factory) -> None:
    """A → B → A: OpenShift compares with lastTriggeredImageID, so the rollback builds,
    by poll and by a new notification alike, and the delivery store is not involved."""
    w = await world()
    a = w.registry.push("base", "latest")
    manifest_a = w.registry.manifests[("base", "latest")]
    await add_config(w, image_config_doc("app", base=docker_ref(f"{w.host}/base:latest")))
    await w.runtime.watcher.run_cycle()
    b = w.registry.push("base", "latest")
    await w.runtime.watcher.run_cycle()
    w.registry.manifests[("base", "latest")] = manifest_a  # rolled back to A
    await w.runtime.watcher.run_cycle()
    builds = await w.builds("app")
    pins = [x.spec.strategy.docker.from_image.name for x in builds]  # type: ignore[union-attr]
    assert pins == [f"{w.host}/base@{d}" for d in (a, b, a)]
    # The registry's notification of that rollback push (a new event) starts nothing more:
    # the poll already built A.
    await w.runtime.handle_push(push(w, "base", "latest", a, "rollback"), 0.0, trusted=True)
    assert len(await w.builds("app")) == 3
    # And by notifications only: B again, then A again.
    await w.runtime.handle_push(push(w, "base", "latest", b, "again-b"), 0.0, trusted=True)
    await w.runtime.handle_push(push(w, "base", "latest", a, "again-a"), 0.0, trusted=True)
    builds = await w.builds("app")
    pins = [x.spec.strategy.docker.from_image.name for x in builds]  # type: ignore[union-attr]
    assert pins[3:] == [f"{w.host}/base@{b}", f"{w.host}/base@{a}"]
    # No delivery record was needed for any of it.
    assert await w.engine.store.prune_deliveries(w.engine.clock()) == 0


async def test_trigger_latency_and_digests_seen_are_measured(world: Factory) -> None:
    """triggerd_image_change_to_build_seconds observes the time from the tag move being
    seen (a notification received, a poll finding it) to the build being created."""
    now = [1000.0]
    w = await world(monotonic=lambda: now[0])

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0

    hist = "triggerd_image_change_to_build_seconds"
    count0, sum0 = value(f"{hist}_count"), value(f"{hist}_sum")
    le2, le5 = value(f"{hist}_bucket", {"le": "2.0"}), value(f"{hist}_bucket", {"le": "5.0"})
    seen0 = value("triggerd_image_digests_seen_total", {"source": "distribution"})
    digest = w.registry.push("base", "latest")
    await add_config(w, image_config_doc("app", base=docker_ref(f"{w.host}/base:latest")))
    # Received 3.5 s ago (the clock the runtime reads says 1000; observed at 996.5).
    await w.runtime.handle_push(push(w, "base", "latest", digest, "e1"), 996.5, trusted=True)
    assert len(await w.builds("app")) == 1
    assert value(f"{hist}_count") - count0 == 1
    assert value(f"{hist}_sum") - sum0 == pytest.approx(3.5)
    assert value(f"{hist}_bucket", {"le": "2.0"}) - le2 == 0
    assert value(f"{hist}_bucket", {"le": "5.0"}) - le5 == 1
    assert value("triggerd_image_digests_seen_total", {"source": "distribution"}) - seen0 == 1
    # A repeat of the same digest is neither a new digest nor a build to measure.
    await w.runtime.handle_push(push(w, "base", "latest", digest, "e2"), 999.0, trusted=True)
    assert value(f"{hist}_count") - count0 == 1
    assert value("triggerd_image_digests_seen_total", {"source": "distribution"}) - seen0 == 1
    # A poll that finds a move: observed when the poll saw it.
    w.registry.push("base", "latest")
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("app")) == 2
    assert value(f"{hist}_count") - count0 == 2
