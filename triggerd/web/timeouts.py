"""A deadline on receiving a request body, so a client that sends slowly (or stops) cannot
hold a handler, a connection and a buffer for ever.

aiohttp has no body read timeout: a handler awaiting ``request.content`` waits as long as
the client keeps the connection open, and its keep-alive timeout applies only between
requests. :func:`body_deadline` gives each request whose body is still arriving a total
budget; when it runs out the body stream is failed with :class:`BodyTimeout`, the handler's
read raises, and the client is answered 408 with the connection closed. Other requests are
never affected. The middleware sits inside the error middleware, so a handler that turns the
error into its own answer (a webhook refusal) still gets counted and logged; it must never
read the body itself nor touch anything but the request's own stream.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler, Middleware

from triggerd import errors
from triggerd.web import errors as web_errors
from triggerd.web import metrics as web_metrics

log = logging.getLogger(__name__)


class BodyTimeout(errors.MalformedPayload):
    """The request body did not arrive within the deadline (a 400 wherever it is caught
    as a malformed payload; this module answers it 408)."""


def body_deadline(seconds: float) -> Middleware:
    """Middleware failing a request whose body has not fully arrived ``seconds`` after its
    headers did."""

    @web.middleware
    async def limit_body_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        stream = request.content
        if not request.body_exists or stream.is_eof():
            return await handler(request)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(seconds, _expire, stream, seconds)
        try:
            return await handler(request)
        except BodyTimeout as e:
            return _timed_out(request, e)
        except errors.MalformedPayload as e:
            # A handler may wrap the stream's error in its own (the webhook reader does).
            if isinstance(e.__cause__, BodyTimeout):
                return _timed_out(request, e.__cause__)
            raise
        finally:
            timer.cancel()

    return limit_body_time


def _expire(stream: StreamReader, seconds: float) -> None:
    if stream.is_eof():
        return  # the body arrived; the handler is only slow, which is not the client's doing
    stream.set_exception(BodyTimeout(f"the request body did not arrive within {seconds:g}s"))


def _timed_out(request: web.Request, error: BodyTimeout) -> web.Response:
    log.info(
        "%s %s: %s; closing the connection",
        request.method,
        web_metrics.route_label(request),
        error,
    )
    body = web_errors.status_body(code=408, reason="Timeout", message=str(error))
    response = web.json_response(body, status=408)
    response.force_close()
    return response
