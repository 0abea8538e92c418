"""Fixtures for the web tests: the real app, a real SqliteStore and LogStore in tmp_path, and
the fake executor, driven through aiohttp's test client on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from tests.factories import buildconfig_doc
from tests.fakes import FakeExecutor
from triggerd.engine import Engine
from triggerd.logs import LogStore
from triggerd.settings import Settings
from triggerd.store.sqlite import SqliteStore
from triggerd.web.app import make_app
from triggerd.web.openapi import Endpoint

TOKEN = "test-token-0123456789"
BODY_LIMIT = 64 * 1024
NS = "default"


@dataclass
class Env:
    client: TestClient[Any, Any]
    engine: Engine
    executor: FakeExecutor
    logs: LogStore
    settings: Settings

    @staticmethod
    def path(resource: str, *, namespace: str = NS, group: str = "build.openshift.io") -> str:
        return f"/apis/{group}/v1/namespaces/{namespace}/{resource}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    async def call(
        self,
        method: str,
        resource: str,
        *,
        json: Any = None,
        data: Any = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
        namespace: str = NS,
        headers: Mapping[str, str] | None = None,
    ) -> ClientResponse:
        all_headers = {**self.auth, **(headers or {})}
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return await self.client.request(
            method,
            self.path(resource, namespace=namespace),
            json=json,
            data=data,
            params=params,
            headers=all_headers,
        )

    async def create_bc(self, name: str = "app", **kwargs: Any) -> dict[str, Any]:
        namespace = kwargs.get("namespace", NS)
        body = buildconfig_doc(name, **kwargs)
        response = await self.call("POST", "buildconfigs", json=body, namespace=namespace)
        assert response.status == 201, await response.text()
        doc: dict[str, Any] = await response.json()
        return doc

    async def start(self, config: str = "app", body: Any = None) -> dict[str, Any]:
        response = await self.call("POST", f"buildconfigs/{config}/instantiate", json=body)
        assert response.status == 201, await response.text()
        doc: dict[str, Any] = await response.json()
        return doc

    async def build(self, name: str) -> dict[str, Any]:
        response = await self.call("GET", f"builds/{name}")
        assert response.status == 200, await response.text()
        doc: dict[str, Any] = await response.json()
        return doc

    async def snapshot(self) -> tuple[Any, Any]:
        """Everything stored in the namespace (to show a rejected request changed nothing)."""
        configs = await (await self.call("GET", "buildconfigs")).json()
        builds = await (await self.call("GET", "builds")).json()
        return configs["items"], builds["items"]


def make_env_app(
    tmp_path: Path, *, extra_routes: Iterable[Endpoint] = (), **settings: Any
) -> tuple[Any, Engine, FakeExecutor, LogStore]:
    options: dict[str, Any] = {
        "data_dir": tmp_path,
        "api_tokens": (TOKEN,),
        "max_concurrent_builds": 1,
        "max_body_bytes": BODY_LIMIT,
        **settings,
    }
    config = Settings(**options)
    logs = LogStore(tmp_path / "logs")
    executor = FakeExecutor(logs)
    engine = Engine(
        settings=config,
        store=SqliteStore(tmp_path / "triggerd.db"),
        executor=executor,
        logs=logs,
    )
    return make_app(engine, logs, config, extra_routes=extra_routes), engine, executor, logs


@pytest.fixture
async def env(tmp_path: Path, aiohttp_client: AiohttpClient) -> Env:
    app, engine, executor, logs = make_env_app(tmp_path)
    client = await aiohttp_client(app)
    return Env(client=client, engine=engine, executor=executor, logs=logs, settings=engine.settings)
