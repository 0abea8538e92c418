"""After the engine/server/planner wiring: the ImageStreamTag build chain with buildah.

base (FROM the busybox in the registry, output ImageStreamTag base:latest) builds and pushes
to imageStreamRegistry; that records the image in the stream, which starts app (FROM
ImageStreamTag base:latest), pinned to the pushed digest; app builds on it with buildah."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imagechange.helpers import docker_ref, image_config_doc, istag
from tests.support.processes import async_wait_for
from tests.support.registry import Registry
from triggerd.engine import Engine
from triggerd.executors.local import LocalExecutor
from triggerd.imagechange_runtime import create_runtime
from triggerd.logs import LogStore
from triggerd.model import imagestreams
from triggerd.model.builds import Phase
from triggerd.settings import RegistrySettings, Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore

pytestmark = pytest.mark.e2e


async def test_image_stream_chain(tmp_path: Path, registry: Registry, base_image: str) -> None:
    data = tmp_path / "data"
    logs = LogStore(data / "logs")
    settings = Settings(
        data_dir=data,
        registries={registry.host: RegistrySettings(insecure=True)},
        image_stream_registry=registry.host,
    )
    engine = Engine(
        settings=settings,
        store=SqliteStore(data / "triggerd.db"),
        executor=LocalExecutor(settings, logs, data / "workspaces"),
        logs=logs,
    )
    runtime = create_runtime(engine, stream_registry=registry.host)
    engine.image_change = runtime
    await engine.start()
    await runtime.start(poll=False)
    try:
        await runtime.streams.create_stream(
            imagestreams.parse({"metadata": {"name": "base"}}), now=engine.clock()
        )
        base = image_config_doc("base", base=docker_ref(base_image), output=istag("base:latest"))
        base["spec"]["source"] = {"type": "Dockerfile", "dockerfile": "FROM x\nLABEL role=base\n"}
        app = image_config_doc(
            "app", base=istag("base:latest"), output=docker_ref(registry.ref("chain/app"))
        )
        app["spec"]["source"] = {"type": "Dockerfile", "dockerfile": "FROM x\nLABEL role=app\n"}
        await engine.create_buildconfig(app)
        await engine.create_buildconfig(base)
        await runtime.watcher.run_cycle()

        async def done() -> bool:
            await runtime.drain()
            page = await engine.store.list_builds(BuildQuery(namespace="default"))
            return len(page.builds) == 2 and all(b.phase.terminal for b in page.builds)

        await async_wait_for(done, timeout=240, what="base and app builds")
        page = await engine.store.list_builds(BuildQuery(namespace="default"))
        by = {b.config_name: b for b in page.builds}
        assert by["base"].phase is Phase.COMPLETE, by["base"].status.message
        assert by["app"].phase is Phase.COMPLETE, by["app"].status.message
        pinned = by["app"].spec.strategy.docker.from_image.name  # type: ignore[union-attr]
        assert pinned == f"{registry.host}/default/base@{by['base'].status.output_digest}"
        assert registry.head_digest("default/base", "latest") == by["base"].status.output_digest
    finally:
        await runtime.stop()
        await engine.stop()
