"""Binary BuildConfigs and the engine's one start path: without an upload no build is made,
however it is asked for (REST instantiate, a ConfigChange or ImageChange trigger, a batch
of webhook starts), and the reason is said; uploads and clones of uploaded builds still
start. Clones are numbered from their config and refused once it is gone.

Real SQLite stores, the fake executor, and for image change triggers the real runtime
watching a counting registry on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.factories import buildconfig_doc
from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc
from triggerd.engine import Engine, StartRequest
from triggerd.errors import NotFound
from triggerd.imagechange_runtime import ImageChangeRuntime
from triggerd.images.registry_client import RegistryClient
from triggerd.images.streams_store import StreamsStore
from triggerd.logs import LogStore
from triggerd.model import builds, requests
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery, Delivery
from triggerd.store.sqlite import SqliteStore

NS = "default"
BINARY = {"type": "Binary", "binary": {}}
UPLOAD = requests.BuildRequest(annotations={builds.BINARY_INPUT_ANNOTATION: "sha256:" + "d" * 64})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    logs = LogStore(tmp_path / "logs")
    made = Engine(
        settings=Settings(data_dir=tmp_path, max_concurrent_builds=1),
        store=SqliteStore(tmp_path / "triggerd.db"),
        executor=FakeExecutor(logs),
        logs=logs,
    )
    await made.start()
    yield made
    await made.stop()


async def names(engine: Engine) -> list[str]:
    return [b.name for b in (await engine.store.list_builds(BuildQuery(namespace=NS))).builds]


def binary_doc(name: str = "bin", **spec: Any) -> dict[str, Any]:
    return buildconfig_doc(name, source=BINARY, **spec)


async def test_rest_instantiate_without_upload_creates_nothing(engine: Engine) -> None:
    await engine.create_buildconfig(binary_doc())
    with pytest.raises(requests.BinaryInputRequired, match="instantiatebinary"):
        await engine.instantiate(NS, "bin", requests.BuildRequest())
    assert await names(engine) == []
    assert (await engine.store.get_buildconfig(NS, "bin")).last_version == 0
    assert (await engine.instantiate(NS, "bin", UPLOAD)).name == "bin-1"


async def test_a_config_change_trigger_skips_a_binary_config(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triggerd.engine")
    await engine.create_buildconfig(binary_doc(triggers=[{"type": "ConfigChange"}]), namespace=NS)
    assert await names(engine) == []
    assert (await engine.store.get_buildconfig(NS, "bin")).last_version == 0
    assert "ConfigChange trigger skipped: the config has binary source" in caplog.text
    # The first upload gets the first number.
    assert (await engine.instantiate(NS, "bin", UPLOAD)).name == "bin-1"


async def test_a_batch_skips_binary_configs_or_refuses_whole(engine: Engine) -> None:
    await engine.create_buildconfig(binary_doc())
    await engine.create_buildconfig(buildconfig_doc("app"))
    starts = [
        StartRequest(namespace=NS, config_name=name, request=requests.BuildRequest())
        for name in ("bin", "app")
    ]
    with pytest.raises(requests.BinaryInputRequired):
        await engine.start_builds(starts)
    assert await names(engine) == []
    delivery = Delivery(key="generic:d-1", received=engine.clock())
    result = await engine.start_builds(starts, delivery=delivery, skip_refused=True)
    assert [b.name for b in result.builds] == ["app-1"]
    [skipped] = result.skipped
    assert skipped.start.config_name == "bin" and "binary source" in skipped.reason
    assert await names(engine) == ["app-1"]
    # a redelivery is a duplicate of what was created, and still names the skip
    again = await engine.start_builds(starts, delivery=delivery, skip_refused=True)
    assert again.duplicate and [b.name for b in again.builds] == ["app-1"]
    assert [s.start.config_name for s in again.skipped] == ["bin"]


async def test_a_clone_of_an_uploaded_build_keeps_working(engine: Engine) -> None:
    await engine.create_buildconfig(binary_doc())
    await engine.instantiate(NS, "bin", UPLOAD)
    clone = await engine.clone(NS, "bin-1")
    assert clone.name == "bin-2"
    assert (
        clone.meta.annotations[builds.BINARY_INPUT_ANNOTATION]
        == (UPLOAD.annotations[builds.BINARY_INPUT_ANNOTATION])
    )
    assert clone.meta.annotations[builds.CLONE_ANNOTATION] == "bin-1"


async def test_a_clone_is_refused_once_its_config_is_gone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As OpenShift's clone, which numbers from the BuildConfig. With Build resources a
    build can outlive its config until the garbage collector takes it; SQLite deletes both
    at once, so the build is kept aside here as the cluster would still show it."""
    await engine.create_buildconfig(buildconfig_doc("app"))
    await engine.instantiate(NS, "app", requests.BuildRequest())
    await engine.instantiate(NS, "app", requests.BuildRequest())
    clone = await engine.clone(NS, "app-1")
    assert clone.name == "app-3"  # numbered from the config's lastVersion, as any build
    original = await engine.store.get_build(NS, "app-1")
    await engine.delete_buildconfig(NS, "app")

    async def still_listed(namespace: str, name: str) -> builds.Build:
        assert (namespace, name) == (NS, "app-1")
        return original

    monkeypatch.setattr(engine.store, "get_build", still_listed)
    with pytest.raises(NotFound, match='"app" not found'):
        await engine.clone(NS, "app-1")
    monkeypatch.undo()
    assert await names(engine) == []


# Image change triggers -------------------------------------------------------------------


async def test_an_image_change_trigger_skips_a_binary_config(
    engine: Engine,
    tmp_path: Path,
    aiohttp_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registry = CountingRegistry()
    server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
    host = f"127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        runtime = ImageChangeRuntime(
            engine,
            streams=StreamsStore(tmp_path / "imagestreams.db"),
            client=RegistryClient(session, insecure=lambda h: True),
            initial_build=True,
            stream_registry=host,
        )
        engine.image_change = runtime
        await runtime.start(poll=False)
        try:
            registry.push("team/base", "latest")
            base = docker_ref(f"{host}/team/base:latest")
            doc = image_config_doc("bin", base=base)
            doc["spec"]["source"] = BINARY
            await engine.create_buildconfig(doc)
            # the same config with source from git: the control, which does build
            await engine.create_buildconfig(image_config_doc("app", base=base))
            await runtime.watcher.run_cycle()  # the tag resolves: the triggers fire
            registry.push("team/base", "latest")
            await runtime.watcher.run_cycle()  # and again for a new digest
            assert await names(engine) == ["app-1", "app-2"]
            binary = await engine.store.get_buildconfig(NS, "bin")
            assert binary.last_version == 0
            [entry] = await runtime.status_entries(binary)
            # Nothing fired: no image id recorded, and no error message either.
            assert entry == {"from": entry["from"]}
        finally:
            await runtime.stop()
            engine.image_change = None
