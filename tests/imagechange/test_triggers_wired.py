"""Image change triggers wired into the engine as ``triggerd serve`` wires them
(``engine.image_change = runtime``): Source and Custom strategies, ConfigChange together with
ImageChange, config changes (unpause, a new ``from``), and the trigger states recovered from
the builds. Real engine, SQLite stores, a counting registry; the fake executor never runs
anything (what is under test is which builds are created and what they are pinned to)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc, istag
from triggerd import imagechange
from triggerd.engine import Engine
from triggerd.errors import Conflict
from triggerd.imagechange_runtime import ImageChangeRuntime
from triggerd.images.registry_client import RegistryClient
from triggerd.images.streams_store import StreamsStore
from triggerd.logs import LogStore
from triggerd.model import imagestreams
from triggerd.model.builds import Build
from triggerd.model.requests import BuildRequest
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore
from triggerd.web import app as web_app
from triggerd.web import registry_hooks

NS = "default"


@dataclass
class Wired:
    engine: Engine
    runtime: ImageChangeRuntime
    registry: CountingRegistry
    host: str

    async def builds(self, config: str) -> list[Build]:
        page = await self.engine.store.list_builds(BuildQuery(namespace=NS, config_name=config))
        return list(page.builds)

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"

    def pinned(self, repo: str, digest: str) -> str:
        return f"{self.host}/{repo}@{digest}"


Factory = Callable[..., Awaitable[Wired]]


@pytest.fixture
async def wired(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Factory]:
    started: list[tuple[Engine, ImageChangeRuntime, aiohttp.ClientSession]] = []

    async def make(*, data: Path | None = None, registry: CountingRegistry | None = None) -> Wired:
        registry = registry or CountingRegistry()
        server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
        host = f"127.0.0.1:{server.port}"
        data = data or tmp_path
        logs = LogStore(data / "logs")
        engine = Engine(
            settings=Settings(data_dir=data),
            store=SqliteStore(data / "triggerd.db"),
            executor=FakeExecutor(logs),
            logs=logs,
        )
        session = aiohttp.ClientSession()
        runtime = ImageChangeRuntime(
            engine,
            streams=StreamsStore(data / "imagestreams.db"),
            client=RegistryClient(session, insecure=lambda h: True),
            stream_registry=host,
        )
        engine.image_change = runtime
        await engine.start()
        await runtime.start(poll=False)
        started.append((engine, runtime, session))
        return Wired(engine, runtime, registry, host)

    yield make
    for engine, runtime, session in started:
        await runtime.stop()
        await engine.stop()
        await session.close()


def source_doc(name: str, builder: dict[str, str], **extra: Any) -> dict[str, Any]:
    """An ``oc new-app``-style S2I config: sourceStrategy.from, empty imageChange."""
    doc = image_config_doc(name, **extra)
    doc["spec"]["strategy"] = {"type": "Source", "sourceStrategy": {"from": builder}}
    doc["spec"]["source"] = {"type": "Git", "git": {"uri": "https://git.example.com/a.git"}}
    return doc


def custom_doc(name: str, builder: dict[str, str]) -> dict[str, Any]:
    doc = image_config_doc(name)
    doc["spec"]["strategy"] = {"type": "Custom", "customStrategy": {"from": builder}}
    return doc


def with_config_change(doc: dict[str, Any]) -> dict[str, Any]:
    doc["spec"]["triggers"] = [
        {"type": "ConfigChange"},
        {"type": "ImageChange", "imageChange": {}},
    ]
    return doc


async def test_source_strategy_with_an_empty_image_change_is_accepted_and_pinned(
    wired: Factory,
) -> None:
    w = await wired()
    first = w.registry.push("builders/python", "3.12")
    await w.engine.create_buildconfig(
        source_doc("s2i", docker_ref(w.ref("builders/python", "3.12")))
    )
    await w.runtime.watcher.run_cycle()
    (build,) = await w.builds("s2i")
    source = build.spec.strategy.source
    assert source is not None
    assert source.from_image.kind.value == "DockerImage"
    assert source.from_image.name == w.pinned("builders/python", first)
    change = build.triggered_by[0]["imageChangeBuild"]
    assert change == {
        "imageID": w.pinned("builders/python", first),
        "fromRef": {"kind": "DockerImage", "name": w.ref("builders/python", "3.12")},
    }
    second = w.registry.push("builders/python", "3.12")
    await w.runtime.watcher.run_cycle()
    builds = await w.builds("s2i")
    assert len(builds) == 2
    assert builds[1].spec.strategy.source.from_image.name == w.pinned(  # type: ignore[union-attr]
        "builders/python", second
    )


async def test_source_strategy_from_an_image_stream_tag_is_resolved_to_a_docker_image(
    wired: Factory,
) -> None:
    """The Build carries sourceStrategy.from as a DockerImage ``<registry>/<ns>/<stream>@
    sha256:…`` (never the ImageStreamTag), for image change and manual builds alike."""
    w = await wired()
    await w.runtime.streams.create_stream(
        imagestreams.parse({"metadata": {"name": "builder"}}), now=w.engine.clock()
    )
    await w.engine.create_buildconfig(source_doc("s2i", istag("builder:latest")))
    assert await w.builds("s2i") == []
    digest = "sha256:" + "5" * 64
    image = f"{w.host}/default/builder@{digest}"
    await w.runtime.record_stream_image(NS, "builder", "latest", digest, image, None)
    (build,) = await w.builds("s2i")
    source = build.spec.strategy.source
    assert source is not None and source.from_image.kind.value == "DockerImage"
    assert source.from_image.name == image
    manual = await w.engine.instantiate(NS, "s2i", BuildRequest())
    assert manual.spec.strategy.source is not None
    assert manual.spec.strategy.source.from_image.name == image
    # The manual build used that image: recording it again starts nothing.
    await w.runtime.record_stream_image(NS, "builder", "latest", digest, image, None)
    assert len(await w.builds("s2i")) == 2


async def test_custom_strategy_from_is_watched_and_pinned(wired: Factory) -> None:
    w = await wired()
    digest = w.registry.push("builders/custom", "latest")
    await w.engine.create_buildconfig(custom_doc("c", docker_ref(w.ref("builders/custom"))))
    await w.runtime.watcher.run_cycle()
    (build,) = await w.builds("c")
    custom = build.spec.strategy.custom
    assert custom is not None and custom.from_image.name == w.pinned("builders/custom", digest)


async def test_config_change_build_first_then_the_image_resolves(wired: Factory) -> None:
    """Created before its tag was ever polled: app-1 (ConfigChange) used whatever the tag
    pointed at; the first digest seen is that one, so no second build."""
    w = await wired()
    first = w.registry.push("base", "latest")
    await w.engine.create_buildconfig(
        with_config_change(image_config_doc("app", base=docker_ref(w.ref("base"))))
    )
    (build,) = await w.builds("app")
    assert build.triggered_by == ({"message": "Build configuration change"},)
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("app")) == 1
    config = await w.engine.store.get_buildconfig(NS, "app")
    (entry,) = await w.runtime.status_entries(config)
    assert entry["lastTriggeredImageID"] == w.pinned("base", first)
    # The next digest builds once.
    second = w.registry.push("base", "latest")
    await w.runtime.watcher.run_cycle()
    builds = await w.builds("app")
    assert [b.triggered_by[0]["message"] for b in builds] == [
        "Build configuration change",
        "Image change",
    ]
    assert builds[1].spec.strategy.docker.from_image.name == w.pinned("base", second)  # type: ignore[union-attr]


async def test_image_already_resolved_when_the_config_with_config_change_is_created(
    wired: Factory,
) -> None:
    """The tag's digest is known (another config watches it): the ConfigChange build
    records it as lastTriggeredImageID, so the image trigger starts nothing."""
    w = await wired()
    digest = w.registry.push("base", "latest")
    await w.engine.create_buildconfig(image_config_doc("other", base=docker_ref(w.ref("base"))))
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("other")) == 1
    await w.engine.create_buildconfig(
        with_config_change(image_config_doc("app", base=docker_ref(w.ref("base"))))
    )
    await w.runtime.watcher.run_cycle()
    (build,) = await w.builds("app")
    assert build.triggered_by == ({"message": "Build configuration change"},)
    recorded = build.meta.annotations[imagechange.IMAGE_TRIGGERS_ANNOTATION]
    assert w.pinned("base", digest) in recorded
    # Same with an ImageStreamTag that already has an image.
    await w.runtime.streams.create_stream(
        imagestreams.parse({"metadata": {"name": "rt"}}), now=w.engine.clock()
    )
    image = f"{w.host}/default/rt@sha256:" + "6" * 64
    await w.runtime.record_stream_image(NS, "rt", "latest", "sha256:" + "6" * 64, image, None)
    await w.engine.create_buildconfig(
        with_config_change(image_config_doc("app2", base=istag("rt:latest")))
    )
    (build2,) = await w.builds("app2")
    assert build2.triggered_by == ({"message": "Build configuration change"},)
    assert build2.spec.strategy.docker.from_image.name == image  # type: ignore[union-attr]


async def test_unpausing_builds_on_the_image_that_moved_while_paused(wired: Factory) -> None:
    w = await wired()
    w.registry.push("base", "latest")
    await w.engine.create_buildconfig(image_config_doc("app", base=docker_ref(w.ref("base"))))
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("app")) == 1
    paused = image_config_doc(
        "app",
        base=docker_ref(w.ref("base")),
        annotations={"openshift.io/build-config.paused": "true"},
    )
    await w.engine.replace_buildconfig(paused, namespace=NS, name="app")
    moved = w.registry.push("base", "latest")
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("app")) == 1  # paused
    await w.engine.replace_buildconfig(
        image_config_doc("app", base=docker_ref(w.ref("base"))), namespace=NS, name="app"
    )
    builds = await w.builds("app")
    assert len(builds) == 2
    assert builds[1].spec.strategy.docker.from_image.name == w.pinned("base", moved)  # type: ignore[union-attr]
    # A replace that changes nothing image-related starts nothing.
    await w.engine.replace_buildconfig(
        image_config_doc("app", base=docker_ref(w.ref("base")), annotations={"x": "y"}),
        namespace=NS,
        name="app",
    )
    assert len(await w.builds("app")) == 2


async def test_a_trigger_moved_to_a_tag_already_watched_builds_at_once(wired: Factory) -> None:
    w = await wired()
    w.registry.push("base", "latest")
    other = w.registry.push("base", "v2")
    await w.engine.create_buildconfig(image_config_doc("app", base=docker_ref(w.ref("base"))))
    await w.engine.create_buildconfig(image_config_doc("v2", base=docker_ref(w.ref("base", "v2"))))
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("app")) == 1
    await w.engine.replace_buildconfig(
        image_config_doc("app", base=docker_ref(w.ref("base", "v2"))), namespace=NS, name="app"
    )
    builds = await w.builds("app")
    assert len(builds) == 2
    assert builds[1].spec.strategy.docker.from_image.name == w.pinned("base", other)  # type: ignore[union-attr]


async def test_states_are_recovered_from_the_builds_when_the_local_state_is_lost(
    tmp_path: Path, wired: Factory
) -> None:
    """A crash between creating a build and storing the trigger state, or a new leader
    with its own (stale) state file: the builds' record prevents a second build."""
    w = await wired()
    digest = w.registry.push("base", "latest")
    await w.engine.create_buildconfig(image_config_doc("app", base=docker_ref(w.ref("base"))))
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("app")) == 1
    await w.runtime.streams.delete_trigger_states(NS, "app")  # the state write was lost
    w.runtime.watcher.forget_digests()
    await w.runtime.watcher.run_cycle()  # sees the same digest "for the first time"
    assert len(await w.builds("app")) == 1
    config = await w.engine.store.get_buildconfig(NS, "app")
    (entry,) = await w.runtime.status_entries(config)
    assert entry["lastTriggeredImageID"] == w.pinned("base", digest)


async def test_an_output_stream_that_does_not_exist_refuses_the_build(wired: Factory) -> None:
    """OpenShift: InvalidOutputReference. The manual build is refused with that reason; an
    image change puts it on the trigger's status and starts nothing."""
    w = await wired()
    w.registry.push("base", "latest")
    doc = image_config_doc("app", base=docker_ref(w.ref("base")), output=istag("missing:latest"))
    await w.engine.create_buildconfig(doc)
    await w.runtime.watcher.run_cycle()
    assert await w.builds("app") == []
    config = await w.engine.store.get_buildconfig(NS, "app")
    (entry,) = await w.runtime.status_entries(config)
    assert "InvalidOutputReference" in entry["message"]
    assert "default/missing" in entry["message"]

    with pytest.raises(Conflict, match="InvalidOutputReference"):
        await w.engine.instantiate(NS, "app", BuildRequest())
    await w.runtime.streams.create_stream(
        imagestreams.parse({"metadata": {"name": "missing"}}), now=w.engine.clock()
    )
    build = await w.engine.instantiate(NS, "app", BuildRequest())
    assert build.spec.output.to is not None and build.spec.output.to.name == "missing:latest"


async def test_rest_api_refuses_cycles_and_shows_trigger_status(wired: Factory) -> None:
    """POST /buildconfigs answers 422 for a config that would close a build chain loop;
    GET /buildconfigs/{name} carries status.imageChangeTriggers in OpenShift's shape."""
    w = await wired()
    digest = w.registry.push("base", "latest")
    settings = replace(w.engine.settings, api_tokens=("t0k",))
    app = web_app.make_app(w.engine, LogStore(w.engine.settings.data_dir / "l"), settings)
    app[registry_hooks.IMAGE_CHANGE] = w.runtime
    app.on_startup.clear()  # the fixture started the engine and the runtime
    app.on_cleanup.clear()
    auth = {"Authorization": "Bearer t0k"}
    api = "/apis/build.openshift.io/v1/namespaces/default/buildconfigs"
    for name in ("a", "b"):
        await w.runtime.streams.create_stream(
            imagestreams.parse({"metadata": {"name": name}}), now=w.engine.clock()
        )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        first = image_config_doc("a", base=istag("b:latest"), output=istag("a:latest"))
        r = await client.post(api, json=first, headers=auth)
        assert r.status == 201, await r.text()
        looping = image_config_doc("b", base=istag("a:latest"), output=istag("b:latest"))
        r = await client.post(api, json=looping, headers=auth)
        assert r.status == 422
        status = await r.json()
        assert status["reason"] == "Invalid"
        (cause,) = status["details"]["causes"]
        assert cause["field"] == "spec.triggers"
        assert "build cycle: default/b → default/a → default/b" in cause["message"]
        r = await client.get(f"{api}/b", headers=auth)
        assert r.status == 404  # nothing was stored
        # A paused trigger closes no loop: accepted.
        looping["spec"]["triggers"] = [{"type": "ImageChange", "imageChange": {"paused": True}}]
        r = await client.post(api, json=looping, headers=auth)
        assert r.status == 201, await r.text()

        await w.engine.create_buildconfig(image_config_doc("app", base=docker_ref(w.ref("base"))))
        await w.runtime.watcher.run_cycle()
        r = await client.get(f"{api}/app", headers=auth)
        assert r.status == 200
        (entry,) = (await r.json())["status"]["imageChangeTriggers"]
        assert entry["from"] == {"name": w.ref("base")}
        assert entry["lastTriggeredImageID"] == w.pinned("base", digest)
        assert entry["lastTriggerTime"].endswith("Z")
        # The list shows the same status as GET of one config.
        r = await client.get(api, headers=auth)
        listed = {i["metadata"]["name"]: i for i in (await r.json())["items"]}
        assert listed["app"]["status"]["imageChangeTriggers"] == [entry]
        r = await client.get(f"{api}/a", headers=auth)
        (entry,) = (await r.json())["status"]["imageChangeTriggers"]
        assert entry == {"from": {"name": "b:latest", "namespace": "default"}}
