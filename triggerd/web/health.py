"""``/healthz`` (the process answers) and ``/readyz`` (the engine can take requests).

Liveness only says the event loop serves HTTP; readiness is true only after the engine
started (store open, crashed builds recovered, config files loaded) and false again as soon
as shutdown begins, so a load balancer or Kubernetes stops sending work before in-flight
requests are finished. Neither needs a token and neither may reveal anything but its state.
"""

from __future__ import annotations

from aiohttp import web

from triggerd.web import LIFECYCLE, auth
from triggerd.web.openapi import Endpoint, Reply


@auth.public
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the server answers."""
    return web.Response(text="ok\n", content_type="text/plain")


@auth.public
async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 once the engine started, 503 before that and while stopping."""
    state = request.app[LIFECYCLE]
    if state.ready and not state.stopping.is_set():
        return web.Response(text="ok\n", content_type="text/plain")
    why = "stopping" if state.stopping.is_set() else "starting"
    return web.Response(
        status=503,
        text=f"not ready: {why}\n",
        content_type="text/plain",
        headers={"Retry-After": "1"},
    )


ROUTES = (
    Endpoint(
        method="GET",
        path="/healthz",
        handler=healthz,
        operation_id="getHealth",
        summary="Liveness probe.",
        tag="meta",
        responses={200: Reply(description="ok", content_type="text/plain", schema=None)},
    ),
    Endpoint(
        method="GET",
        path="/readyz",
        handler=readyz,
        operation_id="getReadiness",
        summary="Readiness probe: 200 once started, 503 while starting or stopping.",
        tag="meta",
        responses={
            200: Reply(description="ready", content_type="text/plain", schema=None),
            503: Reply(description="not ready", content_type="text/plain", schema=None),
        },
    ),
)
