"""After the engine/server/planner wiring: the ImageStreamTag build chain with buildah.

base (FROM a busybox tag in the registry, output ImageStreamTag base:latest) builds and
pushes to imageStreamRegistry; that records the image in the stream, which starts app (FROM
ImageStreamTag base:latest), pinned to the pushed digest; app builds on it with buildah.
Then the busybox tag moves (a security fix in the base's base): base rebuilds once, pinned
to the new digest, and app rebuilds once more, pinned to base's new image."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.imagechange.helpers import docker_ref, image_config_doc, istag
from tests.support.buildah import BUSYBOX_LOCAL_NAME, BuildahEnv
from tests.support.processes import async_wait_for
from tests.support.registry import Registry
from triggerd.engine import Engine
from triggerd.executors.local import LocalExecutor
from triggerd.imagechange_runtime import create_runtime
from triggerd.logs import LogStore
from triggerd.model import imagestreams
from triggerd.model.builds import Build, Phase
from triggerd.settings import RegistrySettings, Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore

pytestmark = pytest.mark.e2e


def pin(build: Build) -> str:
    docker = build.spec.strategy.docker
    assert docker is not None and docker.from_image is not None
    return docker.from_image.name


def busybox_variant(env: BuildahEnv) -> str:
    """The busybox base with one more label: the same files, a new digest."""
    name = "localhost/triggerd-tests/chain-busybox-fixed:latest"
    if env.image_id(name) is None:
        ctr = env.run("from", "--pull-never", BUSYBOX_LOCAL_NAME).stdout.strip()
        env.run("config", "--label", "triggerd.fix=1", ctr)
        env.run("commit", "--quiet", ctr, name)
        env.run("rm", ctr)
    return name


async def test_image_stream_chain(
    tmp_path: Path, registry: Registry, base_image: str, buildah_env: BuildahEnv
) -> None:
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
        # A tag of its own, so that moving it touches no other test.
        upstream = registry.ref("chain/busybox")
        first_upstream = await asyncio.to_thread(buildah_env.push, BUSYBOX_LOCAL_NAME, upstream)
        base = image_config_doc("base", base=docker_ref(upstream), output=istag("base:latest"))
        base["spec"]["source"] = {"type": "Dockerfile", "dockerfile": "FROM x\nLABEL role=base\n"}
        app = image_config_doc(
            "app", base=istag("base:latest"), output=docker_ref(registry.ref("chain/app"))
        )
        app["spec"]["source"] = {"type": "Dockerfile", "dockerfile": "FROM x\nLABEL role=app\n"}
        await engine.create_buildconfig(app)
        await engine.create_buildconfig(base)
        await runtime.watcher.run_cycle()

        def done(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                await runtime.drain()
                page = await engine.store.list_builds(BuildQuery(namespace="default"))
                return len(page.builds) == count and all(b.phase.terminal for b in page.builds)

            return check

        async def builds_of(config: str) -> list[Build]:
            page = await engine.store.list_builds(BuildQuery(namespace="default"))
            return [b for b in page.builds if b.config_name == config]

        await async_wait_for(done(2), timeout=240, what="base and app builds")
        (base_1,) = await builds_of("base")
        (app_1,) = await builds_of("app")
        assert base_1.phase is Phase.COMPLETE, base_1.status.message
        assert app_1.phase is Phase.COMPLETE, app_1.status.message
        assert pin(base_1) == f"{registry.host}/chain/busybox@{first_upstream}"
        assert pin(app_1) == f"{registry.host}/default/base@{base_1.status.output_digest}"
        assert registry.head_digest("default/base", "latest") == base_1.status.output_digest

        # The base's base gets a fix: base rebuilds on it, then app on the new base, once.
        fixed = await asyncio.to_thread(busybox_variant, buildah_env)
        second_upstream = await asyncio.to_thread(buildah_env.push, fixed, upstream)
        await runtime.watcher.run_cycle()
        await async_wait_for(done(4), timeout=240, what="base and app rebuilt")
        await runtime.watcher.run_cycle()  # nothing moved since: nothing more starts
        await runtime.drain()
        bases, apps = await builds_of("base"), await builds_of("app")
        assert len(bases) == 2 and len(apps) == 2
        base_2, app_2 = bases[1], apps[1]
        assert base_2.phase is Phase.COMPLETE, base_2.status.message
        assert app_2.phase is Phase.COMPLETE, app_2.status.message
        assert pin(base_2) == f"{registry.host}/chain/busybox@{second_upstream}"
        assert base_2.status.output_digest != base_1.status.output_digest
        assert pin(app_2) == f"{registry.host}/default/base@{base_2.status.output_digest}"
        assert app_2.triggered_by[0]["imageChangeBuild"]["fromRef"] == {
            "kind": "ImageStreamTag",
            "name": "base:latest",
            "namespace": "default",
        }
    finally:
        await runtime.stop()
        await engine.stop()
