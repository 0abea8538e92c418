"""The HTTP layer: REST API, health, metrics and OpenAPI on aiohttp (webhooks join later).

Requests come in here, are authenticated (:mod:`.auth`), handed to the
:class:`triggerd.engine.Engine`, and the results or domain errors go back out as Kubernetes
JSON (:mod:`.errors` is the only place that picks HTTP statuses). This package holds no
build logic of its own. The application keys below are how handlers reach the engine, the
logs and the settings that :func:`triggerd.web.app.make_app` stored in the application.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from triggerd.engine import Engine
from triggerd.settings import Settings


class LogReader(Protocol):
    """What the web layer needs of :class:`triggerd.logs.LogStore`."""

    def read(self, namespace: str, name: str, tail_lines: int | None = None) -> bytes: ...

    def follow(self, namespace: str, name: str) -> AsyncIterator[bytes]: ...

    def exists(self, namespace: str, name: str) -> bool: ...

    def delete(self, namespace: str, name: str) -> None: ...


@dataclass(slots=True)
class Lifecycle:
    """Readiness of the server: ready once the engine started, not ready while stopping."""

    ready: bool = False
    #: set when shutdown begins, so long-running streams (log follows) end promptly
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


ENGINE: web.AppKey[Engine] = web.AppKey("triggerd.engine")
LOGS: web.AppKey[LogReader] = web.AppKey("triggerd.logs")
SETTINGS: web.AppKey[Settings] = web.AppKey("triggerd.settings")
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("triggerd.lifecycle")
#: Set by a handler that wrote the request's log line itself, status and time included (a
#: webhook delivery's line also names its result and builds): the access log then skips
#: the request instead of logging it twice.
SELF_LOGGED: web.RequestKey[bool] = web.RequestKey("triggerd.self_logged", bool)
