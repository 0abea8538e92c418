"""Kubernetes mode, two replicas wired by ``server.build_components`` on one fake API
server: only the leader polls the registry and starts image change builds; when it steps
down the other takes over with the trigger states the first one wrote (the BuildConfig's
status.imageChangeTriggers, corrected from the Build resources) and does not rebuild what
the first one built; a BuildConfig applied straight to the API server (as kubectl does) is
followed and built by the leader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc
from tests.kubernetes.conftest import NAMESPACE, apiserver, kube_settings, kubeconfig
from tests.support.processes import async_wait_for
from triggerd import server
from triggerd.engine import Engine
from triggerd.imagechange_runtime import ImageChangeRuntime
from triggerd.kube import Kube, KubernetesSettings
from triggerd.model import buildconfigs
from triggerd.model.builds import Build
from triggerd.settings import RegistrySettings, Settings
from triggerd.store.base import BuildQuery
from triggerd.store.kubernetes import KubernetesStore
from triggerd.web import registry_hooks

__all__ = ["apiserver", "kube_settings", "kubeconfig"]  # fixtures used here


@dataclass
class Replica:
    engine: Engine
    runtime: ImageChangeRuntime
    runner: web.AppRunner

    @property
    def leads(self) -> bool:
        return self.runtime.is_leader

    @property
    def polling(self) -> bool:
        task = self.runtime._poll_task
        return task is not None and not task.done()


async def start_replica(name: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Replica:
    monkeypatch.setenv("POD_NAME", name)  # the Lease holder identity
    engine, app = server.build_components(settings)
    runner = web.AppRunner(app)
    await runner.setup()  # starts the engine and the image change runtime
    assert engine.leadership is not None
    engine.leadership.start()  # type: ignore[attr-defined]
    return Replica(engine, app[registry_hooks.IMAGE_CHANGE], runner)


async def stop_replica(replica: Replica) -> None:
    elector: Any = replica.engine.leadership
    await elector.stop()
    await replica.runner.cleanup()
    await elector.kube.close()


@pytest.fixture
async def registry(aiohttp_server: Any) -> AsyncIterator[tuple[CountingRegistry, str]]:
    counting = CountingRegistry()
    served: TestServer = await aiohttp_server(counting.app(), host="127.0.0.1")
    yield counting, f"127.0.0.1:{served.port}"


async def test_only_the_leader_polls_and_a_new_leader_does_not_rebuild(
    tmp_path: Path,
    kube_settings: KubernetesSettings,
    registry: tuple[CountingRegistry, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting, host = registry
    first = counting.push("team/base", "latest")
    kube = Kube(settings=kube_settings)
    store = KubernetesStore(kube, NAMESPACE)
    doc = image_config_doc("app", base=docker_ref(f"{host}/team/base:latest"))
    doc["metadata"]["namespace"] = NAMESPACE
    await store.create_buildconfig(buildconfigs.parse(doc))

    def settings(name: str) -> Settings:
        return Settings(
            data_dir=tmp_path / name,
            store="kubernetes",
            executor="kubernetes",
            kubernetes=kube_settings,
            registries={host: RegistrySettings(insecure=True)},
            image_poll_interval_seconds=1.0,
        )

    async def builds() -> list[Build]:
        page = await store.list_builds(BuildQuery(namespace=NAMESPACE, config_name="app"))
        return list(page.builds)

    def pins(found: list[Build]) -> list[str]:
        return [b.spec.strategy.docker.from_image.name for b in found]  # type: ignore[union-attr]

    a = await start_replica("replica-a", settings("a"), monkeypatch)
    replicas = [a]
    try:
        await async_wait_for(lambda: a.leads, timeout=10, what="replica a to lead")
        b = await start_replica("replica-b", settings("b"), monkeypatch)
        replicas.append(b)

        async def built(n: int) -> bool:
            return len(await builds()) == n

        await async_wait_for(lambda: built(1), timeout=10, what="the first image build")
        assert a.polling and not b.leads and not b.polling
        key = f"{host}/team/base:latest"
        assert b.runtime.watcher.last_digest(key) is None  # b never polled
        second = counting.push("team/base", "latest")
        await async_wait_for(lambda: built(2), timeout=10, what="the tag move to build")
        assert b.runtime.watcher.last_digest(key) is None

        await a.engine.leadership.stop()  # type: ignore[union-attr]  # steps down, releases
        await async_wait_for(lambda: b.leads and b.polling, timeout=10, what="b to take over")
        assert not a.polling
        # b's first poll sees `second` for the first time; the Build resources say it was
        # built already.
        await async_wait_for(
            lambda: b.runtime.watcher.last_digest(key) == second, timeout=10, what="b to poll"
        )
        await b.runtime.drain()
        assert pins(await builds()) == [f"{host}/team/base@{d}" for d in (first, second)]
        third = counting.push("team/base", "latest")
        await async_wait_for(lambda: built(3), timeout=10, what="b to build the next move")
        assert pins(await builds())[2] == f"{host}/team/base@{third}"

        # A BuildConfig applied with kubectl (straight to the API server, through no
        # engine): the leader's runtime follows it and builds it on the image it knows.
        late = image_config_doc("late", base=docker_ref(f"{host}/team/base:latest"))
        late["metadata"]["namespace"] = NAMESPACE
        await store.create_buildconfig(buildconfigs.parse(late))

        async def late_built() -> bool:
            page = await store.list_builds(BuildQuery(namespace=NAMESPACE, config_name="late"))
            return len(page.builds) == 1

        await async_wait_for(late_built, timeout=10, what="the kubectl-applied config's build")
        page = await store.list_builds(BuildQuery(namespace=NAMESPACE, config_name="late"))
        assert pins(list(page.builds)) == [f"{host}/team/base@{third}"]
    finally:
        for replica in replicas:
            await stop_replica(replica)
        await kube.close()
