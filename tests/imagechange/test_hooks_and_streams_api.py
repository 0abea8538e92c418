"""The registry hook route for every kind and the ImageStream API, over real HTTP, with the
real engine and stores; scheduled stream imports feeding ImageStreamTag triggers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc, istag
from triggerd.engine import Engine
from triggerd.imagechange_runtime import ImageChangeRuntime
from triggerd.images.registry_client import RegistryClient
from triggerd.images.streams_store import StreamsStore
from triggerd.intake import signatures
from triggerd.logs import LogStore
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore
from triggerd.web import app as web_app
from triggerd.web import imagestreams as web_streams
from triggerd.web import registry_hooks

DATA = Path(__file__).parent / "data"
TOKEN = "api-token"
API = "/apis/image.openshift.io/v1/namespaces/default/imagestreams"


class Harness:
    def __init__(self, engine: Engine, runtime: ImageChangeRuntime, client: TestClient[Any, Any]):
        self.engine, self.runtime, self.client = engine, runtime, client

    async def add(self, doc: dict[str, Any]) -> None:
        config = await self.engine.create_buildconfig(doc)
        await self.runtime.config_changed(config, created=True)

    async def builds(self, name: str) -> int:
        page = await self.engine.store.list_builds(
            BuildQuery(namespace="default", config_name=name)
        )
        return len(page.builds)


@pytest.fixture
async def harness(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Harness]:
    logs = LogStore(tmp_path / "logs")
    settings = Settings(
        data_dir=tmp_path,
        api_tokens=(TOKEN,),
        registry_notifications={
            "harbor": {"authorization": "harbor-auth"},
            "quay": {"token": "quay-token"},
            "github": {"secret": "gh-secret"},
        },
    )
    engine = Engine(
        settings=settings,
        store=SqliteStore(tmp_path / "triggerd.db"),
        executor=FakeExecutor(logs),
        logs=logs,
    )
    session = aiohttp.ClientSession()
    runtime = ImageChangeRuntime(
        engine,
        streams=StreamsStore(tmp_path / "imagestreams.db"),
        client=RegistryClient(session, insecure=lambda h: True),
        stream_registry="127.0.0.1:5999",
    )
    app = web_app.make_app(
        engine, logs, settings, extra_routes=[*registry_hooks.ROUTES, *web_streams.ROUTES]
    )
    app[registry_hooks.IMAGE_CHANGE] = runtime

    async def start_runtime(_app: Any) -> None:
        await runtime.start(poll=False)

    async def stop_runtime(_app: Any) -> None:
        await runtime.stop()

    app.on_startup.append(start_runtime)
    app.on_cleanup.insert(0, stop_runtime)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Harness(engine, runtime, client)
    await session.close()


async def test_harbor_hook_starts_a_build_with_the_trusted_digest(harness: Harness) -> None:
    await harness.add(
        image_config_doc("app", base=docker_ref("harbor.example.com/harbor/alpine:3.17"))
    )
    body = (DATA / "harbor-push-artifact-tagged.json").read_bytes()
    r = await harness.client.post(
        "/hooks/registry/harbor",
        data=body,
        headers={"Authorization": "harbor-auth", "Content-Type": "application/json"},
    )
    assert r.status == 202
    await harness.runtime.drain()
    assert await harness.builds("app") == 1
    r = await harness.client.post("/hooks/registry/harbor", data=body)
    assert r.status == 401


async def test_github_hook_is_verified_with_hmac(harness: Harness) -> None:
    await harness.add(image_config_doc("app", base=docker_ref("ghcr.io/codertocat/hello-world:v1")))
    body = (DATA / "github-package-container-tagged.json").read_bytes()
    headers = {"X-GitHub-Event": "package", "Content-Type": "application/json"}
    bad = {**headers, "X-Hub-Signature-256": signatures.sign_github(body, "wrong")}
    r = await harness.client.post("/hooks/registry/github", data=body, headers=bad)
    assert r.status == 401
    good = {**headers, "X-Hub-Signature-256": signatures.sign_github(body, "gh-secret")}
    for _ in range(2):  # a redelivery starts nothing new
        r = await harness.client.post("/hooks/registry/github", data=body, headers=good)
        assert r.status == 202
    await harness.runtime.drain()
    assert await harness.builds("app") == 1


async def test_quay_hook_for_an_unwatched_image_is_acknowledged(harness: Harness) -> None:
    body = (DATA / "quay-repo-push.json").read_bytes()
    r = await harness.client.post(
        "/hooks/registry/quay?token=quay-token",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 202
    assert (await r.json())["message"] == (
        "0 tag push(es) accepted, 0 event(s) ignored; nothing watches this image"
    )
    r = await harness.client.post(
        "/hooks/registry/quay?token=quay-token",
        data=b"[1, 2",
        headers={"Content-Type": "application/json"},
    )
    assert r.status == 400


async def test_image_stream_api_and_scheduled_import_chain(
    harness: Harness, aiohttp_server: Any
) -> None:
    registry = CountingRegistry()
    server = await aiohttp_server(registry.app(), host="127.0.0.1")
    upstream = f"127.0.0.1:{server.port}/library/busybox:latest"
    first = registry.push("library/busybox", "latest")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    stream = {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {"name": "base"},
        "spec": {
            "tags": [
                {
                    "name": "latest",
                    "from": {"kind": "DockerImage", "name": upstream},
                    "importPolicy": {"scheduled": True},
                }
            ]
        },
    }
    r = await harness.client.post(API, json=stream, headers=auth)
    assert r.status == 201, await r.text()
    created = await r.json()
    assert created["status"]["dockerImageRepository"] == "127.0.0.1:5999/default/base"
    r = await harness.client.post(API, json=stream, headers=auth)
    assert r.status == 409
    bad = json.loads(json.dumps(stream))
    bad["spec"]["tags"][0]["importPolicy"] = {"scheduled": True, "pollInterval": "often"}
    bad["metadata"]["name"] = "bad"
    r = await harness.client.post(API, json=bad, headers=auth)
    assert r.status == 422
    assert "spec.tags[0].importPolicy.pollInterval" in await r.text()

    await harness.add(image_config_doc("app", base=istag("base:latest")))
    assert await harness.builds("app") == 0
    # The scheduled import polls the upstream tag, records it, and the trigger fires.
    await harness.runtime.watcher.run_cycle()
    assert await harness.builds("app") == 1
    r = await harness.client.get(f"{API}/base", headers=auth)
    items = (await r.json())["status"]["tags"][0]["items"]
    assert [i["image"] for i in items] == [first]
    await harness.runtime.watcher.run_cycle()
    assert await harness.builds("app") == 1
    registry.push("library/busybox", "latest")
    await harness.runtime.watcher.run_cycle()
    assert await harness.builds("app") == 2
    r = await harness.client.get(API, headers=auth)
    assert [s["metadata"]["name"] for s in (await r.json())["items"]] == ["base"]
    r = await harness.client.delete(f"{API}/base", headers=auth)
    assert r.status == 200
    r = await harness.client.get(f"{API}/base", headers=auth)
    assert r.status == 404
