"""In-process servers for the reliability tests that need no subprocess: the real
application (``make_app`` with the webhook routes, a real SqliteStore and LogStore in
tmp_path, the fake executor) served by a real aiohttp ``AppRunner`` on a free 127.0.0.1 port,
so raw sockets, slow clients and shutdown sequences meet the same server code as production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.fakes import FakeExecutor
from tests.reliability.helpers import SECRET, buildconfig
from tests.support.ports import free_port
from triggerd.engine import Engine
from triggerd.logs import LogStore
from triggerd.server import RouteAccessLogger
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore
from triggerd.web import webhooks
from triggerd.web.app import make_app

TOKEN = "reliability-api-token-9b1e"
BODY_LIMIT = 256 * 1024
#: A repository uri the in-process tests route pushes to (builds never run: fake executor).
URI = "https://git.example.com/reliability/app.git"


@dataclass
class Live:
    runner: web.AppRunner
    engine: Engine
    executor: FakeExecutor
    port: int
    tmp_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    async def build_count(self) -> int:
        return len((await self.engine.store.list_builds(BuildQuery())).builds)


def make_live_app(
    data_dir: Path, *, busy_timeout: float = 5.0, **settings: Any
) -> tuple[web.Application, Engine, FakeExecutor]:
    """The production application over a real store and log store; the fake executor."""
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "api_tokens": (TOKEN,),
        "max_concurrent_builds": 1,
        "max_body_bytes": BODY_LIMIT,
        **settings,
    }
    config = Settings(**options)
    logs = LogStore(data_dir / "logs")
    executor = FakeExecutor(logs)
    store = SqliteStore(data_dir / "triggerd.db", busy_timeout=busy_timeout)
    engine = Engine(settings=config, store=store, executor=executor, logs=logs)
    return make_app(engine, logs, config, extra_routes=webhooks.ROUTES), engine, executor


LiveFactory = Callable[..., Awaitable[Live]]


@pytest.fixture
async def live_factory(tmp_path: Path) -> AsyncIterator[LiveFactory]:
    runners: list[web.AppRunner] = []

    async def make(
        *,
        shutdown_timeout: float = 1.0,
        **settings: Any,
    ) -> Live:
        app, engine, executor = make_live_app(tmp_path / f"live-{len(runners)}", **settings)
        runner = web.AppRunner(
            app,
            handler_cancellation=False,
            shutdown_timeout=shutdown_timeout,
            access_log_class=RouteAccessLogger,
        )
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await engine.create_buildconfig(buildconfig(URI))
        return Live(runner=runner, engine=engine, executor=executor, port=port, tmp_path=tmp_path)

    yield make
    for runner in runners:
        if runner.server is not None:
            await runner.cleanup()


@pytest.fixture
async def live(live_factory: LiveFactory) -> Live:
    return await live_factory()


__all__ = ["BODY_LIMIT", "SECRET", "TOKEN", "URI", "Live", "LiveFactory", "make_live_app"]
