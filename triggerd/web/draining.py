"""Graceful drain for ``triggerd serve``: close the listener, then let every request in
flight finish, bodies included, before aiohttp's own shutdown runs.

Why it exists: aiohttp's ``AppRunner.cleanup()`` first marks every connection closing, and a
closing connection drops the bytes that still arrive (``RequestHandler.data_received``
returns early). A webhook whose body was half received at SIGTERM therefore never completes:
its handler waits out the whole shutdown grace and is cancelled, answered with nothing. This
module's :func:`track` middleware counts requests in flight, and :func:`drain` closes the
listening sockets alone (connections keep reading), signals long streams (log follows) to
end, and waits until no request is in flight or the grace is over; ``runner.cleanup()``
afterwards finds nothing left to cut off. It sits in the web layer and must never touch the
engine or the store, nor wait longer than the grace it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from triggerd.web import LIFECYCLE

log = logging.getLogger(__name__)


@dataclass(slots=True)
class InFlight:
    """How many requests are being handled; ``idle`` is set whenever that is zero."""

    count: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("triggerd.in_flight", InFlight)


def install(app: web.Application) -> None:
    """Add the tracking middleware (outermost, so every request is counted) and its state;
    call before the application starts."""
    app[IN_FLIGHT] = InFlight()
    app.middlewares.insert(0, track)


@web.middleware
async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[IN_FLIGHT]
    state.count += 1
    state.idle.clear()
    try:
        return await handler(request)
    finally:
        state.count -= 1
        if state.count == 0:
            state.idle.set()


async def drain(runner: web.AppRunner, grace: float) -> bool:
    """Stop accepting, end log follows, wait for requests in flight; True when none is left
    within ``grace`` seconds (then ``runner.cleanup()`` cuts off only idle connections)."""
    for site in list(runner.sites):
        await site.stop()  # closes the listening socket only; accepted connections live on
    app = runner.app
    # Readiness goes false and log followers end their streams now, not after the grace.
    app[LIFECYCLE].ready = False
    app[LIFECYCLE].stopping.set()
    state = app[IN_FLIGHT]
    if state.count:
        log.info("waiting for %d request(s) in flight", state.count)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await state.idle.wait()
    if state.count:
        log.warning(
            "%d request(s) still in flight after %.0fs; cutting them off", state.count, grace
        )
        return False
    return True
