"""Fixtures for the webhook tests: the real app with the webhook routes, a real SqliteStore
and LogStore in tmp_path, the fake executor, and signed real payloads from tests/intake/data.

The test server logs requests with the production access logger (route templates, never the
path), as ``triggerd serve`` does, so log assertions see what an operator would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from tests.factories import buildconfig_doc
from tests.fakes import FakeExecutor
from tests.web.conftest import make_env_app
from triggerd.engine import Engine
from triggerd.intake import signatures
from triggerd.model.buildconfigs import BuildConfig
from triggerd.model.builds import Build
from triggerd.server import RouteAccessLogger
from triggerd.settings import SecretSettings, Settings
from triggerd.store.base import BuildQuery
from triggerd.web import webhooks

BODY_LIMIT = 256 * 1024
NS = "default"

SECRET = "gh-secret-3f1c9a7e5b"
OTHER_SECRET = "other-secret-8d2e4c6a0f"
REF_SECRET = "referenced-secret-77ab91c3"
BEARER_SECRET = "bearer-secret-c0ffee1234"
SECRETS: Mapping[str, SecretSettings] = {
    "hook-secret": SecretSettings(data={"WebHookSecretKey": REF_SECRET}),
    "generic-bearer": SecretSettings(data={"WebHookSecretKey": BEARER_SECRET}),
}

GITHUB_URI = "https://github.com/Codertocat/Hello-World.git"
GITLAB_URI = "http://example.com/mike/diaspora.git"
CLOUD_URI = "https://bitbucket.org/team_name/repo_name.git"
SERVER_URI = "https://bitbucket.example.com/scm/proj/repository.git"
JSON = "application/json"


def trigger(kind: str, secret: str | None = SECRET, **options: Any) -> dict[str, Any]:
    """A webhook trigger entry: ``trigger("GitHub", branches=["main"])``."""
    hook: dict[str, Any] = dict(options)
    if secret is not None:
        hook["secret"] = secret
    return {"type": kind, kind.lower(): hook}


def github_headers(
    body: bytes,
    *,
    event: str = "push",
    delivery: str | None = None,
    secret: str | None = SECRET,
    content_type: str = JSON,
) -> dict[str, str]:
    headers = {"X-GitHub-Event": event, "Content-Type": content_type}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    if secret is not None:
        headers["X-Hub-Signature-256"] = signatures.sign_github(body, secret)
    return headers


def config_path(name: str, provider: str, secret: str = SECRET, *, namespace: str = NS) -> str:
    return (
        f"/apis/build.openshift.io/v1/namespaces/{namespace}/buildconfigs/{name}"
        f"/webhooks/{secret}/{provider}"
    )


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]
    text: str


@dataclass
class Hooks:
    client: TestClient[Any, Any]
    engine: Engine
    executor: FakeExecutor
    settings: Settings
    tmp_path: Path

    async def add_config(
        self,
        name: str = "app",
        *,
        triggers: Sequence[Mapping[str, Any]] = (),
        uri: str = GITHUB_URI,
        ref: str = "main",
        namespace: str = NS,
        paused: bool = False,
    ) -> BuildConfig:
        doc = buildconfig_doc(name, namespace=namespace, uri=uri, ref=ref)
        doc["spec"]["triggers"] = [dict(t) for t in triggers]
        if paused:
            doc["metadata"]["annotations"] = {"openshift.io/build-config.paused": "true"}
        return await self.engine.create_buildconfig(doc, namespace=namespace)

    async def builds(self) -> list[Build]:
        page = await self.engine.store.list_builds(BuildQuery())
        return list(page.builds)

    async def post(
        self,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        response = await self.client.post(path, data=body, headers=headers or {}, params=params)
        return await read(response)


async def read(response: ClientResponse) -> Reply:
    text = await response.text()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return Reply(status=response.status, body=body, headers=dict(response.headers), text=text)


def make_hooks_app(tmp_path: Path, **settings: Any) -> tuple[Any, Engine, FakeExecutor]:
    options: dict[str, Any] = {"secrets": SECRETS, "max_body_bytes": BODY_LIMIT, **settings}
    app, engine, executor, _ = make_env_app(tmp_path, extra_routes=webhooks.ROUTES, **options)
    return app, engine, executor


async def start_hooks(tmp_path: Path, aiohttp_client: AiohttpClient, **settings: Any) -> Hooks:
    app, engine, executor = make_hooks_app(tmp_path, **settings)
    server = TestServer(app)
    # Started here because aiohttp_client starts servers without runner arguments.
    await server.start_server(access_log_class=RouteAccessLogger)
    client: TestClient[Any, Any] = await aiohttp_client(server)
    return Hooks(
        client=client,
        engine=engine,
        executor=executor,
        settings=engine.settings,
        tmp_path=tmp_path,
    )


@pytest.fixture
async def hooks(tmp_path: Path, aiohttp_client: AiohttpClient) -> Hooks:
    return await start_hooks(tmp_path, aiohttp_client)


def status_of(body: Any, code: int, reason: str) -> None:
    """A Kubernetes Status failure, with no traceback in it."""
    assert isinstance(body, dict)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == code and body["reason"] == reason
    assert body["message"] and "Traceback" not in json.dumps(body)
