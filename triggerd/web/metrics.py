"""``/metrics`` in the Prometheus text format, and the middleware that counts HTTP requests.

Serves :data:`triggerd.metrics.REGISTRY` (builds, queue, webhooks, HTTP). Requests are
counted by route template (``/apis/…/namespaces/{namespace}/builds/{name}``), never by raw
path, so label values stay bounded whatever URLs clients invent; paths that match no route
share the label ``unmatched``. The middleware sits outside the error middleware so it counts
the status actually sent. It must never put names, tokens or query strings into labels.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from triggerd import metrics
from triggerd.web import auth
from triggerd.web.openapi import Endpoint, Reply

UNMATCHED = "unmatched"
CLIENT_CLOSED = 499


def route_label(request: web.Request) -> str:
    match_info = request.match_info
    if match_info.http_exception is not None or match_info.route.resource is None:
        return UNMATCHED
    return match_info.route.resource.canonical


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_label(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        # No response was sent: the client went away (or shutdown cut the request off).
        # 499 is the customary "client closed request" code; 500 would blame the server.
        status = CLIENT_CLOSED
        raise
    finally:
        metrics.http_request_counter(route, request.method, str(status)).inc()
        metrics.http_duration(route).observe(time.perf_counter() - started)


@auth.public
async def serve_metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    body = generate_latest(metrics.REGISTRY)
    response = web.Response(body=body)
    # CONTENT_TYPE_LATEST carries parameters, which aiohttp's content_type argument rejects.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


ROUTES = (
    Endpoint(
        method="GET",
        path="/metrics",
        handler=serve_metrics,
        operation_id="getMetrics",
        summary="Prometheus metrics.",
        tag="meta",
        responses={200: Reply(description="Metrics.", content_type="text/plain", schema=None)},
    ),
)
