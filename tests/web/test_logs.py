"""Build logs over HTTP: whole, tail, empty before the build ran, and follow until it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from tests.factories import buildconfig_doc
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import async_wait_for
from tests.web.conftest import NS, TOKEN, Env, make_env_app
from tests.web.test_buildconfigs import status_of
from tests.web.test_builds import wait_phase
from triggerd import metrics
from triggerd.web import LIFECYCLE, api


async def running_build_with_lines(env: Env, lines: int) -> None:
    await env.create_bc()
    await env.start()
    await env.executor.wait_started(NS, "app-1")
    for i in range(1, lines + 1):
        env.executor.log(NS, "app-1", f"line {i}\n".encode())


async def test_whole_log_and_tail(env: Env) -> None:
    await running_build_with_lines(env, 5)
    response = await env.call("GET", "builds/app-1/log")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert text.startswith("fake build app-1 started\n")
    assert text.endswith("line 4\nline 5\n")
    response = await env.call("GET", "builds/app-1/log", params={"tailLines": "2"})
    assert await response.text() == "line 4\nline 5\n"
    response = await env.call("GET", "builds/app-1/log", params={"previous": "true"})
    assert (await response.text()) == text
    response = await env.call("GET", "builds/app-1/log", params={"tailLines": "many"})
    assert response.status == 400
    status_of(await response.json(), 400, "BadRequest")


async def test_log_of_a_queued_build_is_empty(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.start()
    await env.executor.wait_started(NS, "app-1")
    response = await env.call("GET", "builds/app-2/log")
    assert response.status == 200
    assert await response.read() == b""
    response = await env.call("GET", "builds/nope/log")
    assert response.status == 404
    status_of(await response.json(), 404, "NotFound")


async def test_follow_waits_for_a_queued_build_and_ends_when_it_finishes(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.start()
    await env.executor.wait_started(NS, "app-1")
    response = await env.call("GET", "builds/app-2/log", params={"follow": "true"})
    assert response.status == 200
    body = asyncio.ensure_future(response.read())
    env.executor.finish(NS, "app-1")
    await env.executor.wait_started(NS, "app-2")
    env.executor.log(NS, "app-2", b"step 1\n")
    env.executor.log(NS, "app-2", b"step 2\n")
    assert not body.done()
    env.executor.finish(NS, "app-2")
    text = (await asyncio.wait_for(body, 10)).decode()
    assert text == "fake build app-2 started\nstep 1\nstep 2\n"
    # The stream ended only once the build was stored as finished.
    assert (await env.build("app-2"))["status"]["phase"] == "Complete"


async def test_follow_with_tail_lines_of_a_running_build(env: Env) -> None:
    await running_build_with_lines(env, 3)
    response = await env.call("GET", "builds/app-1/log", params={"follow": "1", "tailLines": "1"})
    body = asyncio.ensure_future(response.read())
    env.executor.log(NS, "app-1", b"line 4\n")
    env.executor.fail(NS, "app-1")
    assert (await asyncio.wait_for(body, 10)) == b"line 3\nline 4\n"


async def test_follow_of_a_finished_build_returns_the_log(env: Env) -> None:
    await running_build_with_lines(env, 2)
    env.executor.finish(NS, "app-1")
    await wait_phase(env, "app-1", "Complete")
    response = await env.call("GET", "builds/app-1/log", params={"follow": "true"})
    assert await response.text() == "fake build app-1 started\nline 1\nline 2\n"


async def test_follow_of_a_build_cancelled_before_it_ran_ends_empty(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.start()
    await env.executor.wait_started(NS, "app-1")
    response = await env.call("GET", "builds/app-2/log", params={"follow": "true"})
    body = asyncio.ensure_future(response.read())
    patch = await env.call(
        "PATCH",
        "builds/app-2",
        json={"status": {"cancelled": True}},
        content_type="application/merge-patch+json",
    )
    assert patch.status == 200
    assert (await asyncio.wait_for(body, 10)) == b""


async def test_follow_ends_when_the_build_is_deleted(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deleting a build wakes nobody; the follower notices at its next safety-net poll.
    monkeypatch.setattr(api, "FOLLOW_POLL_SECONDS", 0.05)
    await env.create_bc()
    await env.start()
    await env.start()
    await env.executor.wait_started(NS, "app-1")
    response = await env.call("GET", "builds/app-2/log", params={"follow": "true"})
    body = asyncio.ensure_future(response.read())
    assert (await env.call("DELETE", "builds/app-2")).status == 200
    assert (await asyncio.wait_for(body, 10)) == b""


async def test_follow_ends_when_the_server_stops(env: Env) -> None:
    await running_build_with_lines(env, 1)
    response = await env.call("GET", "builds/app-1/log", params={"follow": "true"})
    body = asyncio.ensure_future(response.read())
    env.executor.log(NS, "app-1", b"line 2\n")
    env.client.app[LIFECYCLE].stopping.set()  # what on_shutdown does
    text = (await asyncio.wait_for(body, 10)).decode()
    assert text.endswith("line 1\nline 2\n")
    assert (await env.build("app-1"))["status"]["phase"] == "Running"


async def test_a_vanished_follower_does_not_linger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As triggerd serve runs it: aiohttp does not cancel the handler of a vanished client
    # (the test client's server would), so the handler must notice by itself.
    monkeypatch.setattr(api, "FOLLOW_POLL_SECONDS", 0.05)
    app, _, executor, _ = make_env_app(tmp_path)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    route = "/apis/build.openshift.io/v1/namespaces/{namespace}/builds/{name}/log"
    served = metrics.HTTP_REQUESTS.labels(route, "GET", "200")
    base = f"http://{LOOPBACK}:{port}{Env.path('', namespace=NS)}"
    try:
        async with ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            for body in (buildconfig_doc("app"), None, None):
                url = f"{base}buildconfigs" + ("" if body else "/app/instantiate")
                async with session.post(url, json=body) as response:
                    assert response.status == 201
            await executor.wait_started(NS, "app-1")
            before = served._value.get()
            response = await session.get(f"{base}builds/app-2/log", params={"follow": "true"})
            assert response.status == 200
            response.close()  # the client goes away while app-2 is still queued
            await async_wait_for(
                lambda: served._value.get() > before, timeout=10, what="follower finished"
            )
    finally:
        await runner.cleanup()
