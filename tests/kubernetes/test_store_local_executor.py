"""``store: kubernetes`` with the default ``executor: local``, wired by the server's own
composition root against the fake API server: BuildConfigs and Builds are custom resources,
the build runs in this process (no Job), and the Build reaches Complete as a CR.

The local executor that ``build_components`` makes is replaced by the fake one from
tests/fakes.py after the wiring is checked (as bench/intake_bench.py does), so no buildah
runs: what is under test is the store and the engine wired for this combination."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from tests import factories
from tests.fakes import DIGEST, FakeExecutor
from tests.kubernetes.cluster import JOBS
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.support.processes import async_wait_for
from triggerd.engine import Engine
from triggerd.executors.local import LocalExecutor
from triggerd.kube import KubernetesSettings
from triggerd.logs import LogStore
from triggerd.server import build_components
from triggerd.settings import Settings
from triggerd.store.kubernetes import KubernetesStore
from triggerd.web import api

TOKEN = "store-local-token-0123456789"
BUILDS = ("triggerd.dev/v1", "builds")
BUILDCONFIGS = ("triggerd.dev/v1", "buildconfigs")
API = f"/apis/build.openshift.io/v1/namespaces/{NAMESPACE}"


class Served:
    def __init__(self, client: TestClient[Any, Any], engine: Engine, fake: FakeExecutor) -> None:
        self.client, self.engine, self.fake = client, engine, fake

    async def call(self, method: str, resource: str, json: Any = None) -> Any:
        response = await self.client.request(
            method, f"{API}/{resource}", json=json, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status < 300, await response.text()
        if response.content_type == "application/json":
            return await response.json()
        return await response.text()


@pytest.fixture
async def served(
    kube_settings: KubernetesSettings, tmp_path: Path, aiohttp_client: AiohttpClient
) -> AsyncIterator[Served]:
    settings = Settings(
        data_dir=tmp_path, store="kubernetes", kubernetes=kube_settings, api_tokens=(TOKEN,)
    )
    assert settings.executor == "local"  # the default, not named in the settings
    engine, app = build_components(settings)
    # The combination as wired: CR store, in-process executor, a leader elector (the store
    # is shared by every replica, so only one of them may run builds), no pod log reader.
    assert isinstance(engine.store, KubernetesStore)
    assert isinstance(engine.executor, LocalExecutor)
    assert engine.leadership is not None
    assert api.POD_LOGS not in app
    fake = FakeExecutor(cast(LogStore, engine.logs))
    engine.executor = fake
    client: TestClient[Any, Any] = await aiohttp_client(app)  # starts the engine
    elector: Any = engine.leadership
    elector.start()
    await async_wait_for(lambda: elector.is_leader, timeout=5, what="leading")
    try:
        yield Served(client, engine, fake)
    finally:
        await elector.stop()
        await client.close()
        await elector.kube.close()


async def test_a_build_runs_locally_to_complete_and_is_stored_as_a_custom_resource(
    served: Served, apiserver: FakeApiServer
) -> None:
    await served.call("POST", "buildconfigs", factories.buildconfig_doc("app", namespace=NAMESPACE))
    assert apiserver.get(BUILDCONFIGS, NAMESPACE, "app") is not None
    build = await served.call("POST", "buildconfigs/app/instantiate", {"kind": "BuildRequest"})
    name = build["metadata"]["name"]
    assert apiserver.get(BUILDS, NAMESPACE, name) is not None  # stored before it runs

    await served.fake.wait_started(NAMESPACE, name)

    def stored_phase() -> str:
        resource = apiserver.get(BUILDS, NAMESPACE, name) or {}
        return str((resource.get("status") or {}).get("phase", ""))

    await async_wait_for(lambda: stored_phase() == "Running", timeout=10, what="Running CR")
    served.fake.finish(NAMESPACE, name)
    await async_wait_for(lambda: stored_phase() == "Complete", timeout=10, what="Complete CR")

    resource = apiserver.get(BUILDS, NAMESPACE, name)
    assert resource is not None
    assert resource["status"]["output"]["to"]["imageDigest"] == DIGEST
    assert resource["metadata"]["labels"]["openshift.io/build-config.name"] == "app"
    # The REST API answers from the same resource, and the log is the local one.
    answered = await served.call("GET", f"builds/{name}")
    assert answered["status"]["phase"] == "Complete"
    assert f"fake build {name} started" in await served.call("GET", f"builds/{name}/log")
    assert JOBS not in apiserver.calls.creates  # built in this process, no Job
    assert served.fake.running == set()
