"""The registry hook over real HTTP: GitHub deliveries verified with the GitHub trigger
secrets of the BuildConfigs (each acting for its own config only) or the shared secret
(for everyone), pings, pushes nothing watches, Docker Hub and Quay pushes of a watched image
confirmed with a HEAD, and a replica that does not lead."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc
from triggerd import metrics
from triggerd.engine import Engine
from triggerd.imagechange_runtime import ImageChangeRuntime
from triggerd.images import references
from triggerd.images.registry_client import RegistryClient
from triggerd.images.streams_store import StreamsStore
from triggerd.intake import signatures
from triggerd.logs import LogStore
from triggerd.settings import SecretSettings, Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore
from triggerd.web import app as web_app
from triggerd.web import registry_hooks

DATA = Path(__file__).parent / "data"
GH_IMAGE = "ghcr.io/codertocat/hello-world:v1"
GH_JSON = {"Content-Type": "application/json"}


class LocalHub(RegistryClient):
    """Docker Hub's API host answered by the local counting registry (the notification can
    only name docker.io); every other host as usual."""

    hub = ""

    def base_url(self, registry: str) -> str:
        if registry == references.DOCKER_HUB:
            return f"http://{self.hub}"
        return super().base_url(registry)


class Leadership:
    def __init__(self) -> None:
        self.is_leader = True


@dataclass
class Hook:
    engine: Engine
    runtime: ImageChangeRuntime
    client: TestClient[Any, Any]
    registry: CountingRegistry
    host: str
    leadership: Leadership

    async def add(self, doc: dict[str, Any]) -> None:
        config = await self.engine.create_buildconfig(doc)
        await self.runtime.config_changed(config, created=True)

    async def builds(self, name: str) -> list[Any]:
        page = await self.engine.store.list_builds(
            BuildQuery(namespace="default", config_name=name)
        )
        return list(page.builds)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        r = await self.client.post(path, data=body, headers=headers)
        text = await r.text()
        await self.runtime.drain()
        return r.status, text


Factory = Callable[..., Awaitable[Hook]]


@pytest.fixture
async def hook(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Factory]:
    opened: list[tuple[TestClient[Any, Any], aiohttp.ClientSession]] = []

    async def make(notifications: dict[str, dict[str, str]] | None = None) -> Hook:
        registry = CountingRegistry()
        server: TestServer = await aiohttp_server(registry.app(), host="127.0.0.1")
        host = f"127.0.0.1:{server.port}"
        logs = LogStore(tmp_path / "logs")
        settings = Settings(
            data_dir=tmp_path,
            registry_notifications=notifications or {},
            secrets={"gh-hook": SecretSettings(data={"WebHookSecretKey": "named-secret"})},
        )
        leadership = Leadership()
        engine = Engine(
            settings=settings,
            store=SqliteStore(tmp_path / "triggerd.db"),
            executor=FakeExecutor(logs),
            logs=logs,
            leadership=leadership,
        )
        session = aiohttp.ClientSession()
        client = LocalHub(session, insecure=lambda h: True)
        client.hub = host
        runtime = ImageChangeRuntime(
            engine, streams=StreamsStore(tmp_path / "imagestreams.db"), client=client
        )
        app = web_app.make_app(engine, logs, settings, extra_routes=registry_hooks.ROUTES)
        app[registry_hooks.IMAGE_CHANGE] = runtime

        async def start_runtime(_app: Any) -> None:
            await runtime.start(poll=False)

        async def stop_runtime(_app: Any) -> None:
            await runtime.stop()

        app.on_startup.append(start_runtime)
        app.on_cleanup.insert(0, stop_runtime)
        test_client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await test_client.start_server()
        opened.append((test_client, session))
        return Hook(engine, runtime, test_client, registry, host, leadership)

    yield make
    for test_client, session in opened:
        await test_client.close()
        await session.close()


def github_trigger(**github: Any) -> dict[str, Any]:
    return {"type": "GitHub", "github": github}


def gh_config(name: str, image: str, trigger: dict[str, Any] | None) -> dict[str, Any]:
    triggers: list[dict[str, Any]] = [{"type": "ImageChange", "imageChange": {}}]
    if trigger is not None:
        triggers.append(trigger)
    return image_config_doc(name, base=docker_ref(image), triggers=triggers)


def signed(
    body: bytes, secret: str, event: str = "package", delivery: str | None = None
) -> dict[str, str]:
    return {
        **GH_JSON,
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or f"d-{secret}-{len(body)}",
        "X-Hub-Signature-256": signatures.sign_github(body, secret),
    }


def package(image: str, digest: str) -> bytes:
    """GitHub's package delivery for ``image`` (``host/repo:tag``) at ``digest``."""
    doc = json.loads((DATA / "github-package-container-tagged.json").read_text())
    version = doc["package"]["package_version"]
    version["package_url"] = image
    version["container_metadata"]["tag"] = {"name": image.rsplit(":", 1)[1], "digest": digest}
    return json.dumps(doc).encode()


def pinned(build: Any) -> str:
    return str(build.spec.strategy.docker.from_image.name)


async def test_github_deliveries_are_verified_with_the_trigger_secrets(
    hook: Factory, aiohttp_server: Any
) -> None:
    h = await hook()
    body = (DATA / "github-package-container-tagged.json").read_bytes()
    # No secret anywhere yet: nothing can verify a delivery.
    status, text = await h.post("/hooks/registry/github", body, signed(body, "inline-secret"))
    assert status == 401 and "no secret to verify" in text
    # The watching config has an inline GitHub secret; another config (watching nothing
    # of this image) has a named one. Either verifies; a wrong one does not.
    await h.add(gh_config("app", GH_IMAGE, github_trigger(secret="inline-secret")))
    await h.add(
        gh_config("other", f"{h.host}/x:1", github_trigger(secretReference={"name": "gh-hook"}))
    )
    status, _ = await h.post("/hooks/registry/github", body, signed(body, "wrong"))
    assert status == 401
    status, _ = await h.post(
        "/hooks/registry/github", body, {**GH_JSON, "X-GitHub-Event": "package"}
    )
    assert status == 401
    # Verified, but "other" does not watch this image: its secret cannot act for "app".
    status, text = await h.post("/hooks/registry/github", body, signed(body, "named-secret"))
    assert status == 202, text
    assert json.loads(text)["message"].endswith(registry_hooks.NOT_THE_SIGNERS)
    assert await h.builds("app") == []
    status, text = await h.post("/hooks/registry/github", body, signed(body, "inline-secret"))
    assert status == 202, text
    assert len(await h.builds("app")) == 1
    assert h.registry.counts["HEAD"] == 0  # its own secret vouches for its digest
    # The same package delivery again: the same digest, no build.
    again = {**signed(body, "inline-secret"), "X-GitHub-Delivery": "again"}
    status, _ = await h.post("/hooks/registry/github", body, again)
    assert status == 202
    assert len(await h.builds("app")) == 1


async def test_a_config_secret_cannot_fire_another_configs_image(hook: Factory) -> None:
    h = await hook()
    image_a, image_b = f"{h.host}/team-a/app:v1", f"{h.host}/team-b/app:v1"
    await h.add(gh_config("a", image_a, github_trigger(secret="secret-a")))
    await h.add(gh_config("b", image_b, github_trigger(secret="secret-b")))
    forged = "sha256:" + "f" * 64
    body = package(image_b, forged)
    status, text = await h.post(
        "/hooks/registry/github", body, signed(body, "secret-a", delivery="1")
    )
    assert status == 202, text
    assert json.loads(text)["message"].endswith(registry_hooks.NOT_THE_SIGNERS)
    assert await h.builds("b") == []
    assert h.registry.counts["HEAD"] == 0  # not even an early poll on A's say-so
    # Whether another tenant watches an image is not A's to learn: the same answer for an
    # image nobody watches.
    body = package(f"{h.host}/team-c/unwatched:v1", forged)
    status, text = await h.post(
        "/hooks/registry/github", body, signed(body, "secret-a", delivery="unwatched")
    )
    assert status == 202, text
    assert json.loads(text)["message"].endswith(registry_hooks.NOT_THE_SIGNERS)
    # B's own secret: B builds the digest its delivery names.
    real = h.registry.push("team-b/app", "v1")
    body = package(image_b, real)
    status, _ = await h.post("/hooks/registry/github", body, signed(body, "secret-b", delivery="2"))
    assert status == 202
    assert [pinned(b) for b in await h.builds("b")] == [f"{h.host}/team-b/app@{real}"]
    assert await h.builds("a") == []


async def test_a_shared_image_gets_the_signers_digest_and_the_others_the_registrys(
    hook: Factory,
) -> None:
    h = await hook()
    image = f"{h.host}/shared/base:v1"
    current = h.registry.push("shared/base", "v1")
    await h.add(gh_config("a", image, github_trigger(secret="secret-a")))
    await h.add(gh_config("b", image, None))
    await h.runtime.watcher.run_cycle()
    assert len(await h.builds("a")) == len(await h.builds("b")) == 1
    # A forges a digest for the image both watch: A's own config takes it (A could start
    # that build anyway), B only hears what the registry confirms: nothing new.
    forged = "sha256:" + "f" * 64
    body = package(image, forged)
    status, _ = await h.post("/hooks/registry/github", body, signed(body, "secret-a", delivery="1"))
    assert status == 202
    assert [pinned(b) for b in await h.builds("b")] == [f"{h.host}/shared/base@{current}"]
    assert f"{h.host}/shared/base@{forged}" in [pinned(b) for b in await h.builds("a")]
    assert h.registry.counts["HEAD shared/base:v1"] == 2  # the poll, then B's confirmation
    # A real move announced with A's secret reaches B as well (confirmed).
    moved = h.registry.push("shared/base", "v1")
    body = package(image, moved)
    status, _ = await h.post("/hooks/registry/github", body, signed(body, "secret-a", delivery="2"))
    assert status == 202
    assert pinned((await h.builds("b"))[-1]) == f"{h.host}/shared/base@{moved}"
    assert pinned((await h.builds("a"))[-1]) == f"{h.host}/shared/base@{moved}"


async def test_a_digest_vouched_for_by_a_configs_secret_is_not_rolled_back(
    hook: Factory,
) -> None:
    h = await hook()
    image = f"{h.host}/team-a/base:v1"
    h.registry.push("team-a/base", "v1")
    await h.add(gh_config("a", image, github_trigger(secret="secret-a")))
    await h.runtime.watcher.run_cycle()
    assert len(await h.builds("a")) == 1
    moved = h.registry.push("team-a/base", "v1")
    body = package(image, moved)
    status, _ = await h.post("/hooks/registry/github", body, signed(body, "secret-a", delivery="1"))
    assert status == 202
    assert len(await h.builds("a")) == 2
    # The config changes before any poll confirms the digest: it keeps the image its own
    # secret vouched for rather than going back to the older one the watcher last saw.
    config = await h.engine.store.get_buildconfig("default", "a")
    await h.runtime.config_changed(config, created=False)
    await h.runtime.watcher.run_cycle()
    builds = await h.builds("a")
    assert len(builds) == 2
    assert pinned(builds[-1]) == f"{h.host}/team-a/base@{moved}"


async def test_the_shared_secret_vouches_for_every_watcher(hook: Factory) -> None:
    h = await hook({"github": {"secret": "shared-secret"}})
    image = f"{h.host}/shared/base:v1"
    await h.add(gh_config("a", image, github_trigger(secret="secret-a")))
    await h.add(gh_config("b", image, None))
    digest = h.registry.push("shared/base", "v1")
    body = package(image, digest)
    status, text = await h.post(
        "/hooks/registry/github", body, signed(body, "shared-secret", delivery="1")
    )
    assert status == 202, text
    for name in ("a", "b"):
        assert [pinned(b) for b in await h.builds(name)] == [f"{h.host}/shared/base@{digest}"]
    assert h.registry.counts["HEAD"] == 0


async def test_unsigned_github_deliveries_are_refused_without_reading_the_store(
    hook: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await hook({"github": {"secret": "shared-secret"}})
    image = f"{h.host}/shared/base:v1"
    await h.add(gh_config("a", image, github_trigger(secret="secret-a")))
    listed: list[Any] = []
    original = h.engine.store.list_buildconfigs

    async def counting(*args: Any, **kwargs: Any) -> Any:
        listed.append(args)
        return await original(*args, **kwargs)

    monkeypatch.setattr(h.engine.store, "list_buildconfigs", counting)
    body = package(image, h.registry.push("shared/base", "v1"))
    unsigned = {**GH_JSON, "X-GitHub-Event": "package", "X-GitHub-Delivery": "u"}
    status, text = await h.post("/hooks/registry/github", body, unsigned)
    assert status == 401 and "X-Hub-Signature-256 is missing" in text
    status, _ = await h.post("/hooks/registry/github", body, signed(body, "secret-b"))
    assert status == 401
    status, _ = await h.post("/hooks/registry/github", body, signed(body, "secret-a"))
    assert status == 202
    assert len(await h.builds("a")) == 1
    assert listed == []


async def test_a_github_ping_verified_by_any_trigger_secret_is_acknowledged(
    hook: Factory,
) -> None:
    h = await hook()
    await h.add(gh_config("app", f"{GH_IMAGE}", github_trigger(secret="s3")))
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    status, _ = await h.post("/hooks/registry/github", ping, signed(ping, "nope", "ping"))
    assert status == 401
    status, text = await h.post("/hooks/registry/github", ping, signed(ping, "s3", "ping"))
    assert status == 202, text
    assert "1 event(s) ignored" in text


async def test_a_verified_push_of_an_image_nothing_watches_is_acknowledged(
    hook: Factory,
) -> None:
    h = await hook()
    await h.add(gh_config("app", f"{h.host}/unrelated:1", github_trigger(secret="s4")))
    body = (DATA / "github-package-container-tagged.json").read_bytes()
    status, text = await h.post("/hooks/registry/github", body, signed(body, "s4"))
    assert status == 202
    assert json.loads(text)["message"].endswith(registry_hooks.NOT_THE_SIGNERS)
    assert await h.builds("app") == []


async def test_docker_hub_push_of_a_watched_image_is_confirmed_with_a_head(
    hook: Factory,
) -> None:
    h = await hook({"dockerhub": {"token": "hub-token"}})
    digest = h.registry.push("svendowideit/testhook", "latest")
    await h.add(image_config_doc("app", base=docker_ref("svendowideit/testhook:latest")))
    body = (DATA / "dockerhub-push.json").read_bytes()
    status, _ = await h.post("/hooks/registry/dockerhub?token=wrong", body, GH_JSON)
    assert status == 401
    assert h.registry.counts["HEAD"] == 0
    status, text = await h.post("/hooks/registry/dockerhub?token=hub-token", body, GH_JSON)
    assert status == 202, text
    assert h.registry.counts["HEAD svendowideit/testhook:latest"] == 1
    (build,) = await h.builds("app")
    pinned = build.spec.strategy.docker.from_image.name
    assert pinned == f"docker.io/svendowideit/testhook@{digest}"
    # Docker Hub repeats itself: the HEAD finds the same digest, nothing starts.
    await h.post("/hooks/registry/dockerhub?token=hub-token", body, GH_JSON)
    assert len(await h.builds("app")) == 1


async def test_quay_push_of_a_watched_image_is_confirmed_with_a_head(hook: Factory) -> None:
    h = await hook({"quay": {"token": "quay-token"}})
    doc = json.loads((DATA / "quay-repo-push.json").read_text())
    doc["docker_url"] = f"{h.host}/dgangaia/test"  # the local registry, as Quay names itself
    body = json.dumps(doc).encode()
    first = h.registry.push("dgangaia/test", "latest")
    await h.add(image_config_doc("app", base=docker_ref(f"{h.host}/dgangaia/test:latest")))
    status, _ = await h.post("/hooks/registry/quay?token=quay-token", body, GH_JSON)
    assert status == 202
    second = h.registry.push("dgangaia/test", "latest")
    status, _ = await h.post("/hooks/registry/quay?token=quay-token", body, GH_JSON)
    assert status == 202
    assert h.registry.counts["HEAD dgangaia/test:latest"] == 2
    builds = await h.builds("app")
    pins = [b.spec.strategy.docker.from_image.name for b in builds]
    assert pins == [f"{h.host}/dgangaia/test@{first}", f"{h.host}/dgangaia/test@{second}"]


async def test_a_replica_that_does_not_lead_answers_503_and_starts_nothing(
    hook: Factory,
) -> None:
    h = await hook({"quay": {"token": "quay-token"}})
    doc = json.loads((DATA / "quay-repo-push.json").read_text())
    doc["docker_url"] = f"{h.host}/dgangaia/test"
    body = json.dumps(doc).encode()
    h.registry.push("dgangaia/test", "latest")
    await h.add(image_config_doc("app", base=docker_ref(f"{h.host}/dgangaia/test:latest")))
    h.leadership.is_leader = False
    status, _ = await h.post("/hooks/registry/quay?token=wrong", body, GH_JSON)
    assert status == 401  # authentication comes first
    r = await h.client.post("/hooks/registry/quay?token=quay-token", data=body, headers=GH_JSON)
    assert r.status == 503
    assert r.headers["Retry-After"] == "1"
    await h.runtime.drain()
    assert h.registry.counts["HEAD"] == 0
    assert await h.builds("app") == []
    # A poll on a non-leader does not start builds either.
    await h.runtime.watcher.run_cycle()
    assert await h.builds("app") == []
    value = metrics.REGISTRY.get_sample_value(
        "triggerd_registry_notifications_total", {"kind": "quay", "result": "not_leader"}
    )
    assert value is not None and value >= 1
    h.leadership.is_leader = True
    status, _ = await h.post("/hooks/registry/quay?token=quay-token", body, GH_JSON)
    assert status == 202
    assert len(await h.builds("app")) == 1
