"""Assembles the aiohttp application: middlewares, route tables and the engine's life cycle.

:func:`make_app` is called by :mod:`triggerd.server` (and by tests) with a constructed but
not yet started engine. The application starts the engine when it starts (readiness turns
true only after that returned) and stops it after the last in-flight request finished, so a
request never meets a closed store. Middleware order, outermost first: metrics (counts the
status really sent), errors (domain errors → Status), body cap, authentication. It must
never start builds or talk to the store itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from triggerd import errors
from triggerd.engine import Engine
from triggerd.settings import Settings
from triggerd.web import (
    ENGINE,
    LIFECYCLE,
    LOGS,
    SETTINGS,
    Lifecycle,
    LogReader,
    api,
    auth,
    draining,
    health,
    openapi,
    timeouts,
)
from triggerd.web import errors as web_errors
from triggerd.web import metrics as web_metrics

log = logging.getLogger(__name__)


def make_app(
    engine: Engine,
    logs: LogReader,
    settings: Settings,
    *,
    extra_routes: Iterable[openapi.Endpoint] = (),
) -> web.Application:
    """The application; ``settings.api_tokens`` are the accepted bearer tokens.

    ``extra_routes`` lets later route tables (webhooks) join without editing this module;
    they keep their own authentication by marking handlers :func:`triggerd.web.auth.public`.
    """
    app = web.Application(
        # aiohttp refuses larger bodies read with request.read()/json()/post() (413).
        client_max_size=settings.max_body_bytes,
        middlewares=[
            web_metrics.count_requests,
            web_errors.error_middleware,
            timeouts.body_deadline(settings.body_read_timeout_seconds),
            _body_cap(settings.max_body_bytes),
            auth.middleware(settings.api_tokens),
        ],
    )
    draining.install(app)
    app[ENGINE] = engine
    app[LOGS] = logs
    app[SETTINGS] = settings
    app[LIFECYCLE] = Lifecycle()
    openapi.add_endpoints(
        app,
        [
            *health.ROUTES,
            *web_metrics.ROUTES,
            *openapi.ROUTES,
            *api.ROUTES,
            *extra_routes,
        ],
    )
    app.on_startup.append(_start_engine)
    app.on_shutdown.append(_begin_shutdown)
    app.on_cleanup.append(_stop_engine)
    return app


def _body_cap(limit: int) -> Middleware:
    @web.middleware
    async def refuse_large_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Refuse on the declared length before a byte of the body is read; bodies without a
        # length are counted while read (api.read_body, aiohttp's client_max_size).
        if request.content_length is not None and request.content_length > limit:
            raise errors.PayloadTooLarge(
                f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes"
            )
        return await handler(request)

    return refuse_large_bodies


async def _start_engine(app: web.Application) -> None:
    await app[ENGINE].start()
    app[LIFECYCLE].ready = True
    log.info("engine started; ready")


async def _begin_shutdown(app: web.Application) -> None:
    # Runs after the listening sockets closed and before in-flight requests are awaited:
    # readiness goes false and log followers end their streams instead of holding shutdown.
    state = app[LIFECYCLE]
    state.ready = False
    state.stopping.set()


async def _stop_engine(app: web.Application) -> None:
    await _begin_shutdown(app)  # also when cleanup comes without a shutdown (tests)
    await app[ENGINE].stop()
    log.info("engine stopped")
