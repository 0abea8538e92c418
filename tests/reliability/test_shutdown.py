"""Graceful shutdown of a real ``triggerd serve``: SIGTERM closes the listener, lets the
request in flight end properly, exits 0, leaves the running build to be recovered as
Error/ServerRestarted at the next start (never stuck Running), and the restarted server
works through the queued New builds in build-number order.

The request in flight at SIGTERM there is a log follow (it only ends with the build or the
server). A webhook whose body is still arriving at SIGTERM is the case aiohttp alone gets
wrong (the bytes are dropped, the handler waits out the grace and nothing is answered): the
in-process tests below show it, and that :mod:`triggerd.web.draining` fixes it once
triggerd/server.py calls ``draining.drain`` before ``runner.cleanup()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import aiohttp

from tests.e2e.server import API, TOKEN, TriggerdServer
from tests.reliability.conftest import URI, Live, LiveFactory
from tests.reliability.helpers import (
    CONFIG,
    all_builds,
    buildconfig,
    commit_of,
    git_black_hole,
    number,
    post,
    push_body,
    push_headers,
    read_reply,
    request_head,
    revision,
)
from tests.support.processes import async_wait_for, wait_for
from triggerd.web import draining

QUEUED = 5


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _running(server: TriggerdServer) -> list[int]:
    return sorted(number(b) for b in all_builds(server) if b["status"]["phase"] == "Running")


async def test_sigterm_finishes_in_flight_requests_and_restart_keeps_the_queue_order(
    tmp_path: Path,
) -> None:
    with git_black_hole() as uri:
        server = TriggerdServer(tmp_path / "server", {"maxConcurrentBuilds": 1})
        await asyncio.to_thread(server.start)
        try:
            await asyncio.to_thread(server.apply, buildconfig(uri))
            for i in range(QUEUED):
                body = push_body(uri, i)
                status, answer = await asyncio.to_thread(
                    post, f"{server.url}/hooks/github", body, push_headers(body, f"term-{i}")
                )
                assert status == 201, answer
            await asyncio.to_thread(
                wait_for, lambda: _running(server) == [1], timeout=30, what="build 1 running"
            )

            # A request in flight at SIGTERM: a log follow of the running build, which only
            # ends when the build does or the server stops.
            assert server.process is not None
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"{server.url}{API}/builds/{CONFIG}-1/log?follow=true",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as follow,
            ):
                assert follow.status == 200
                os.kill(server.process.pid, signal.SIGTERM)
                await asyncio.to_thread(
                    wait_for,
                    lambda: _refuses_connections(server.port),
                    timeout=15,
                    what="the listener to close",
                )
                # The stream ends properly (a complete chunked body), not cut off.
                await asyncio.wait_for(follow.read(), 15)
            process = server.process
            await asyncio.to_thread(wait_for, lambda: not process.running, timeout=30, what="exit")
            assert process.returncode == 0, server.log_text()[-3000:]
            assert "finishing in-flight requests" in server.log_text()

            await asyncio.to_thread(server.start)
            first = await asyncio.to_thread(server.build, f"{CONFIG}-1")
            assert first["status"]["phase"] == "Error", first["status"]
            assert first["status"]["reason"] == "ServerRestarted"
            builds = await asyncio.to_thread(all_builds, server)
            assert {revision(b) for b in builds} == {commit_of(i) for i in range(QUEUED)}
            assert len(builds) == QUEUED

            # The queue continues in order: each cancel lets exactly the next number start.
            started = []
            for expected in range(2, QUEUED + 1):
                await asyncio.to_thread(
                    wait_for,
                    lambda e=expected: _running(server) == [e],
                    timeout=30,
                    what=f"build {expected} running alone",
                )
                started.append(expected)
                status, answer = await asyncio.to_thread(
                    server.request,
                    "PATCH",
                    f"{API}/builds/{CONFIG}-{expected}",
                    {"status": {"cancelled": True}},
                    content_type="application/merge-patch+json",
                )
                assert status == 200, answer
            assert started == list(range(2, QUEUED + 1))
            expected_phases = {1: "Error", **{n: "Cancelled" for n in started}}

            def phases() -> dict[int, str]:
                return {number(b): b["status"]["phase"] for b in all_builds(server)}

            # Cancelling a running build stops its process first; the last one may still be
            # on its way to Cancelled.
            await asyncio.to_thread(
                wait_for, lambda: phases() == expected_phases, timeout=30, what="all final"
            )
        finally:
            server.stop()


async def _half_sent_delivery(
    live: Live,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    body = push_body(URI, 99)
    head = request_head(
        "POST",
        "/hooks/github",
        live.port,
        {**push_headers(body, "half"), "Connection": "close"},
        length=len(body),
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    # The handler is waiting for the rest of the body once the server has counted it.
    await async_wait_for(
        lambda: live.runner.app[draining.IN_FLIGHT].count == 1,
        timeout=10,
        what="the request to reach its handler",
    )
    return reader, writer, body[len(body) // 2 :]


async def test_aiohttp_alone_drops_a_body_still_arriving_at_shutdown(
    live_factory: LiveFactory,
) -> None:
    """Why triggerd.web.draining exists: plain ``runner.cleanup()`` stops reading the
    connection, so the delivery is never answered (server.py drains first)."""
    live = await live_factory(shutdown_timeout=1.0)
    reader, writer, rest = await _half_sent_delivery(live)
    cleanup = asyncio.ensure_future(live.runner.cleanup())
    await async_wait_for(
        lambda: _refuses_connections(live.port), timeout=10, what="the listener to close"
    )
    writer.write(rest)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 15)
    await cleanup
    writer.close()
    assert b"201" not in answer.split(b"\r\n", 1)[0]
    # (The engine is stopped now; the file tells what was stored.)
    assert _stored_builds(live) == 0


async def test_drain_lets_a_half_sent_delivery_finish(live_factory: LiveFactory) -> None:
    live = await live_factory(shutdown_timeout=1.0)
    reader, writer, rest = await _half_sent_delivery(live)
    drained = asyncio.ensure_future(draining.drain(live.runner, grace=15))
    await async_wait_for(
        lambda: _refuses_connections(live.port), timeout=10, what="the listener to close"
    )
    assert not drained.done()  # waiting for the delivery in flight
    writer.write(rest)
    await writer.drain()
    reply = await asyncio.wait_for(read_reply(reader), 15)
    writer.close()
    assert reply.status == 201, reply
    assert await asyncio.wait_for(drained, 15) is True
    assert await live.build_count() == 1
    await live.runner.cleanup()


async def test_drain_gives_up_after_the_grace(live_factory: LiveFactory) -> None:
    live = await live_factory(shutdown_timeout=1.0)
    _reader, writer, _rest = await _half_sent_delivery(live)
    started = time.monotonic()
    assert await draining.drain(live.runner, grace=0.3) is False
    assert time.monotonic() - started < 5
    await live.runner.cleanup()
    writer.close()
    assert _stored_builds(live) == 0


def _stored_builds(live: Live) -> int:
    [path] = live.tmp_path.glob("live-*/triggerd.db")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM builds").fetchone()
    return int(count)
