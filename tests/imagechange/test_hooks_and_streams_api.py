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


def stream_doc(name: str, tags: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "image.openshift.io/v1",
        "kind": "ImageStream",
        "metadata": {"name": name},
        "spec": {"tags": tags},
    }


async def test_a_spec_tag_is_imported_once_and_import_errors_become_conditions(
    harness: Harness, aiohttp_server: Any
) -> None:
    """OpenShift imports every spec tag with a ``from`` when the stream is created or the
    tag changes, scheduled or not; a failed import shows as an ImportSuccess False
    condition with a reason (NotFound, Unauthorized) on status.tags[]."""
    public = CountingRegistry()
    private = CountingRegistry(auth="basic", users={"u": "p"})
    public_host = f"127.0.0.1:{(await aiohttp_server(public.app(), host='127.0.0.1')).port}"
    private_host = f"127.0.0.1:{(await aiohttp_server(private.app(), host='127.0.0.1')).port}"
    digest = public.push("library/busybox", "1.36")
    private.push("team/secret", "latest")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    doc = stream_doc(
        "mixed",
        [
            {"name": "stable", "from": docker_ref(f"{public_host}/library/busybox:1.36")},
            {"name": "missing", "from": docker_ref(f"{public_host}/library/busybox:nope")},
            {"name": "private", "from": docker_ref(f"{private_host}/team/secret:latest")},
            {"name": "local"},
        ],
    )
    r = await harness.client.post(API, json=doc, headers=auth)
    assert r.status == 201, await r.text()
    await harness.runtime.drain()
    r = await harness.client.get(f"{API}/mixed", headers=auth)
    tags = {t["tag"]: t for t in (await r.json())["status"]["tags"]}
    assert [i["image"] for i in tags["stable"]["items"]] == [digest]
    assert tags["stable"]["items"][0]["dockerImageReference"] == (
        f"{public_host}/library/busybox@{digest}"
    )
    assert "conditions" not in tags["stable"]
    (missing,) = tags["missing"]["conditions"]
    assert missing["type"] == "ImportSuccess" and missing["status"] == "False"
    assert missing["reason"] == "NotFound"
    assert "library/busybox:nope" in missing["message"]
    assert tags["missing"]["items"] == []
    (denied,) = tags["private"]["conditions"]
    assert denied["reason"] == "Unauthorized" and "team/secret" in denied["message"]
    assert "local" not in tags
    # Imported once: polling does not touch tags that are not scheduled.
    heads = public.counts["HEAD"]
    await harness.runtime.watcher.run_cycle()
    assert public.counts["HEAD"] == heads
    # A replace that keeps every tag's from imports nothing (not even "missing", which
    # exists upstream now); a changed from is imported, and its success clears the
    # tag's condition.
    public.push("library/busybox", "nope")
    r = await harness.client.get(f"{API}/mixed", headers=auth)
    current = await r.json()
    current["metadata"]["labels"] = {"touched": "yes"}
    r = await harness.client.put(f"{API}/mixed", json=current, headers=auth)
    assert r.status == 200, await r.text()
    await harness.runtime.drain()
    assert public.counts["HEAD"] == heads
    current = await r.json()
    current["spec"]["tags"][2]["from"] = docker_ref(f"{public_host}/library/busybox:nope")
    r = await harness.client.put(f"{API}/mixed", json=current, headers=auth)
    assert r.status == 200, await r.text()
    await harness.runtime.drain()
    r = await harness.client.get(f"{API}/mixed", headers=auth)
    tags = {t["tag"]: t for t in (await r.json())["status"]["tags"]}
    assert "conditions" not in tags["private"]
    assert len(tags["private"]["items"]) == 1
    assert "conditions" in tags["missing"]  # its from did not change: not imported again


async def test_scheduled_import_errors_show_and_clear(
    harness: Harness, aiohttp_server: Any
) -> None:
    registry = CountingRegistry()
    host = f"127.0.0.1:{(await aiohttp_server(registry.app(), host='127.0.0.1')).port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    doc = stream_doc(
        "base",
        [
            {
                "name": "latest",
                "from": docker_ref(f"{host}/library/busybox:latest"),
                "importPolicy": {"scheduled": True},
            }
        ],
    )
    r = await harness.client.post(API, json=doc, headers=auth)
    assert r.status == 201
    await harness.runtime.watcher.run_cycle()
    r = await harness.client.get(f"{API}/base", headers=auth)
    (tag,) = (await r.json())["status"]["tags"]
    assert tag["conditions"][0]["reason"] == "NotFound"
    digest = registry.push("library/busybox", "latest")
    await harness.runtime.watcher.run_cycle()
    r = await harness.client.get(f"{API}/base", headers=auth)
    (tag,) = (await r.json())["status"]["tags"]
    assert "conditions" not in tag
    assert [i["image"] for i in tag["items"]] == [digest]


async def test_stream_poll_intervals_below_one_second_are_refused(harness: Harness) -> None:
    doc = stream_doc(
        "fast",
        [
            {
                "name": "latest",
                "from": docker_ref("127.0.0.1:5999/x:latest"),
                "importPolicy": {"scheduled": True, "pollInterval": "0s"},
            }
        ],
    )
    r = await harness.client.post(API, json=doc, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 422
    assert "spec.tags[0].importPolicy.pollInterval" in await r.text()
    assert "at least 1s" in await r.text()
