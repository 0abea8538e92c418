"""One BuildConfig's trouble does not stop the others watching the same image.

Two configs and an image stream watch one registry tag; the config sorted first cannot be
read (stored by kubectl in a shape triggerd cannot parse) or its trigger state store is
busy (TemporaryError). The other config still builds and the stream still imports; a busy
one fires at the next poll, or, for an image stream item (reported once), when the
runtime evaluates it again. A config that turns unreadable leaves the runtime's index
through the store's BuildConfig watch (``include_invalid``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc, istag
from tests.support.processes import async_wait_for
from triggerd import imagechange
from triggerd.engine import Engine
from triggerd.errors import FieldError, Invalid, TemporaryError
from triggerd.image_events import ImagePush, Notification, RegistryKind
from triggerd.imagechange_runtime import ImageChangeRuntime
from triggerd.images.registry_client import RegistryClient
from triggerd.images.streams_store import StreamsStore
from triggerd.logs import LogStore
from triggerd.model import buildconfigs, imagestreams
from triggerd.model.builds import Build
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery
from triggerd.store.kubernetes import ConfigEvent
from triggerd.store.sqlite import SqliteStore

NS = "default"


class KubectlStore(SqliteStore):
    """SQLite, plus what the Kubernetes store adds: a BuildConfig watch (fed by the test,
    honouring ``include_invalid`` as the real one does) and configs kubectl stored that
    triggerd cannot parse (``get_buildconfig`` raises Invalid)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.unreadable: set[str] = set()
        self.watchers: list[tuple[bool, asyncio.Queue[ConfigEvent]]] = []

    async def get_buildconfig(self, namespace: str, name: str) -> buildconfigs.BuildConfig:
        if name in self.unreadable:
            raise Invalid(buildconfigs.KIND, name, [FieldError("spec.strategy", "unknown type")])
        return await super().get_buildconfig(namespace, name)

    async def watch_buildconfigs(
        self, *, timeout_seconds: int = 240, include_invalid: bool = False
    ) -> AsyncIterator[ConfigEvent]:
        queue: asyncio.Queue[ConfigEvent] = asyncio.Queue()
        self.watchers.append((include_invalid, queue))
        while True:
            yield await queue.get()

    def emit(self, event: ConfigEvent) -> None:
        for include_invalid, queue in self.watchers:
            if event.config is not None or include_invalid:
                queue.put_nowait(event)


class BusyStreams(StreamsStore):
    """Trigger states of the configs named in ``busy`` cannot be read for now."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.busy: set[str] = set()

    async def trigger_states(
        self, namespace: str, name: str
    ) -> dict[int, imagechange.TriggerState]:
        if name in self.busy:
            raise TemporaryError("trigger state store busy")
        return await super().trigger_states(namespace, name)


class Leadership:
    is_leader = True


@dataclass
class World:
    engine: Engine
    store: KubectlStore
    streams: BusyStreams
    runtime: ImageChangeRuntime
    registry: CountingRegistry
    host: str
    image: str = field(init=False)

    def __post_init__(self) -> None:
        self.image = f"{self.host}/team/base:latest"

    async def builds(self, config: str) -> list[Build]:
        page = await self.store.list_builds(BuildQuery(namespace=NS, config_name=config))
        return list(page.builds)

    async def add(self, name: str) -> buildconfigs.BuildConfig:
        config = await self.engine.create_buildconfig(
            image_config_doc(name, base=docker_ref(self.image))
        )
        await self.runtime.config_changed(config, created=True)
        return config

    async def add_mirror(self) -> None:
        """An image stream whose tag imports the same image on a schedule."""
        stream = imagestreams.parse(
            {
                "metadata": {"name": "mirror", "namespace": NS},
                "spec": {
                    "tags": [
                        {
                            "name": "latest",
                            "from": {"kind": "DockerImage", "name": self.image},
                            "importPolicy": {"scheduled": True},
                        }
                    ]
                },
            }
        )
        created = await self.streams.create_stream(stream, now=self.engine.clock())
        await self.runtime.stream_changed(created)

    async def add_chain(self, *names: str) -> None:
        """An empty image stream ``base`` (what a base build outputs to) and configs
        building FROM ImageStreamTag base:latest."""
        stream = imagestreams.parse({"metadata": {"name": "base", "namespace": NS}})
        await self.runtime.stream_changed(
            await self.streams.create_stream(stream, now=self.engine.clock())
        )
        for name in names:
            config = await self.engine.create_buildconfig(
                image_config_doc(name, base=istag("base:latest"))
            )
            await self.runtime.config_changed(config, created=True)

    async def mirrored(self) -> str | None:
        latest = (await self.streams.get_stream(NS, "mirror")).latest("latest")
        return latest.image if latest is not None else None

    def notification(self, digest: str, delivery: str) -> Notification:
        push = ImagePush(
            source=RegistryKind.DISTRIBUTION,
            delivery_id=delivery,
            registry=self.host,
            repository="team/base",
            tag="latest",
            digest=digest,
        )
        return Notification(source=RegistryKind.DISTRIBUTION, pushes=(push,))


Factory = Callable[[], Awaitable[World]]


@pytest.fixture
async def world(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Factory]:
    started: list[tuple[Engine, ImageChangeRuntime, aiohttp.ClientSession]] = []

    async def make() -> World:
        registry = CountingRegistry()
        server = await aiohttp_server(registry.app(), host="127.0.0.1")
        logs = LogStore(tmp_path / "logs")
        store = KubectlStore(tmp_path / "triggerd.db")
        engine = Engine(
            settings=Settings(data_dir=tmp_path),
            store=store,
            executor=FakeExecutor(logs),
            logs=logs,
            leadership=Leadership(),
        )
        await engine.start()
        session = aiohttp.ClientSession()
        streams = BusyStreams(tmp_path / "imagestreams.db")
        runtime = ImageChangeRuntime(
            engine,
            streams=streams,
            client=RegistryClient(session, insecure=lambda h: True),
            reevaluate_after=0.01,
        )
        await runtime.start(poll=False)
        started.append((engine, runtime, session))
        return World(engine, store, streams, runtime, registry, f"127.0.0.1:{server.port}")

    yield make
    for engine, runtime, session in started:
        await runtime.stop()
        await engine.stop()
        await session.close()


async def test_an_unreadable_config_does_not_stop_the_others_or_the_import(
    world: Factory,
) -> None:
    w = await world()
    await w.add("a-broken")  # sorted first: it used to abort the loop
    await w.add("b-app")
    await w.add_mirror()
    w.store.unreadable.add("a-broken")
    digest = w.registry.push("team/base", "latest")
    w.runtime.submit(w.notification(digest, "d1"), trusted=True)
    await w.runtime.drain()
    (build,) = await w.builds("b-app")
    assert build.spec.strategy.docker is not None
    assert build.spec.strategy.docker.from_image is not None
    assert build.spec.strategy.docker.from_image.name == f"{w.host}/team/base@{digest}"
    assert await w.mirrored() == digest
    assert await w.builds("a-broken") == []
    # Nothing a retry could fix: the move counts as handled (a poll finds nothing new).
    assert w.runtime.watcher.last_digest(w.image) == digest


async def test_a_busy_config_fires_at_the_next_poll_without_holding_up_the_others(
    world: Factory,
) -> None:
    w = await world()
    await w.add("a-busy")
    await w.add("b-app")
    await w.add_mirror()
    w.streams.busy.add("a-busy")
    digest = w.registry.push("team/base", "latest")
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("b-app")) == 1
    assert await w.mirrored() == digest
    assert await w.builds("a-busy") == []
    # Its trigger did not fire: the watcher reports the same move again.
    assert w.runtime.watcher.last_digest(w.image) != digest
    w.streams.busy.clear()
    await w.runtime.watcher.run_cycle()
    assert len(await w.builds("a-busy")) == 1
    assert len(await w.builds("b-app")) == 1  # already built this image: no second build
    assert w.runtime.watcher.last_digest(w.image) == digest


async def test_a_busy_config_is_not_taken_as_fired_by_a_notification(world: Factory) -> None:
    w = await world()
    await w.add("a-busy")
    await w.add("b-app")
    await w.add_mirror()
    w.streams.busy.add("a-busy")
    digest = w.registry.push("team/base", "latest")
    w.runtime.submit(w.notification(digest, "d1"), trusted=True)
    await w.runtime.drain()
    assert len(await w.builds("b-app")) == 1
    assert await w.mirrored() == digest
    assert await w.builds("a-busy") == []
    assert w.runtime.watcher.last_digest(w.image) != digest
    w.streams.busy.clear()
    # The registry's retry of the same delivery is acted on (it was not handled).
    w.runtime.submit(w.notification(digest, "d1"), trusted=True)
    await w.runtime.drain()
    assert len(await w.builds("a-busy")) == 1
    assert len(await w.builds("b-app")) == 1


async def test_a_config_turning_unreadable_leaves_the_index(world: Factory) -> None:
    w = await world()
    config = await w.add("app")
    assert w.runtime.watches(w.image)
    # kubectl stores a shape triggerd cannot parse: the watch reports it without a config.
    w.store.emit(ConfigEvent(type="MODIFIED", namespace=NS, name="app", problem="bad"))
    await async_wait_for(
        lambda: not w.runtime.watches(w.image), timeout=5, what="the unreadable config unindexed"
    )
    assert w.image not in w.runtime.watcher.keys
    # Deleted while unreadable: the watch has no config to report either.
    w.store.emit(ConfigEvent(type="DELETED", namespace=NS, name="app", problem="bad"))
    # Fixed again (the same spec as before it broke): indexed again, so the watch
    # survived both events and the config's last spec is not taken as already seen.
    w.store.emit(ConfigEvent(type="ADDED", namespace=NS, name="app", config=config))
    await async_wait_for(
        lambda: w.runtime.watches(w.image), timeout=5, what="the fixed config indexed again"
    )


async def test_a_busy_config_misses_no_image_stream_item(world: Factory) -> None:
    """An item recorded in a stream (a build's output) is reported once: a config that
    could not act on it then is evaluated again until it can, without a second build of
    the ones that did."""
    w = await world()
    await w.add_chain("a-busy", "b-app")
    w.streams.busy.add("a-busy")
    digest = "sha256:" + "b" * 64
    image = f"{w.host}/default/base@{digest}"
    await w.runtime.record_stream_image(NS, "base", "latest", digest, image, None)
    assert len(await w.builds("b-app")) == 1
    assert await w.builds("a-busy") == []
    w.streams.busy.clear()

    async def a_busy_built() -> bool:
        return len(await w.builds("a-busy")) == 1

    await async_wait_for(a_busy_built, timeout=5, what="a-busy evaluated again")
    (build,) = await w.builds("a-busy")
    assert build.spec.strategy.docker is not None
    assert build.spec.strategy.docker.from_image is not None
    assert build.spec.strategy.docker.from_image.name == image
    assert len(await w.builds("b-app")) == 1


async def test_stop_cancels_a_pending_evaluation(world: Factory) -> None:
    w = await world()
    await w.add_chain("a-busy")
    w.streams.busy.add("a-busy")
    w.runtime.reevaluate_after = 3600.0
    digest = "sha256:" + "c" * 64
    await w.runtime.record_stream_image(
        NS, "base", "latest", digest, f"{w.host}/default/base@{digest}", None
    )
    (pending,) = w.runtime._reevaluations.values()
    await asyncio.wait_for(w.runtime.stop(), timeout=5)
    assert pending.cancelled()


async def test_a_busy_config_misses_nothing_the_catch_up_finds(world: Factory) -> None:
    """Taking the lead, the runtime evaluates configs watching stream tags against the
    streams as they are (an item another leader recorded): one that cannot act for now is
    evaluated again until it can."""
    w = await world()
    await w.add_chain("a-busy")
    digest = "sha256:" + "d" * 64
    image = f"{w.host}/default/base@{digest}"
    event = imagestreams.TagEvent(
        docker_image_reference=image, image=digest, created=w.engine.clock()
    )
    await w.streams.record_tag(NS, "base", "latest", event)  # as the previous leader did
    w.streams.busy.add("a-busy")
    await w.runtime._catch_up()
    assert await w.builds("a-busy") == []
    w.streams.busy.clear()

    async def a_busy_built() -> bool:
        return len(await w.builds("a-busy")) == 1

    await async_wait_for(a_busy_built, timeout=5, what="a-busy evaluated again")
