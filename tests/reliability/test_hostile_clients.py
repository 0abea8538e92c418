"""Slow and oversized clients against the real application on a real aiohttp server.

- A client that sends its body slowly (or stops) is answered 408 once
  :func:`triggerd.web.timeouts.body_deadline` runs out, while other clients are served as
  usual meanwhile; nothing is stored for it.
- A declared Content-Length over ``maxBodyBytes`` is refused 413 before one body byte is
  sent; a chunked body with no end is cut off at the cap (413, connection closed) instead
  of being read for ever.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.reliability.conftest import BODY_LIMIT, TOKEN, URI, Live, LiveFactory
from tests.reliability.helpers import push_body, push_headers, read_reply, request_head

DEADLINE = 0.5
API_CONFIGS = "/apis/build.openshift.io/v1/namespaces/default/buildconfigs"


async def _stalled(
    live: Live, path: str, headers: dict[str, str], sent: bytes, length: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(request_head("POST", path, live.port, headers, length=length) + sent)
    await writer.drain()
    return reader, writer


async def test_a_stalled_body_gets_408_and_others_are_served_meanwhile(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(body_read_timeout_seconds=DEADLINE)
    body = push_body(URI, 1)
    stalled = [
        await _stalled(live, "/hooks/github", push_headers(body, "slow"), body[:100], len(body)),
        await _stalled(
            live,
            API_CONFIGS,
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            b'{"kind": "BuildConfig", ',
            4096,
        ),
    ]
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        for i in range(2, 22):
            other = push_body(URI, i)
            async with session.post(
                f"{live.url}/hooks/github", data=other, headers=push_headers(other, f"fast-{i}")
            ) as response:
                assert response.status == 201, await response.text()
    served = time.monotonic() - started
    for reader, writer in stalled:
        reply = await asyncio.wait_for(read_reply(reader), 10 * DEADLINE + 5)
        assert reply.status == 408, reply
        assert reply.headers.get("connection", "").lower() == "close"
        answer = json.loads(reply.body)
        assert answer["kind"] == "Status" and answer["code"] == 408
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
        writer.close()
    waited = time.monotonic() - started
    assert waited >= DEADLINE
    assert await live.build_count() == 20
    print(f"20 deliveries served in {served:.3f}s while 2 clients stalled; 408 after {waited:.2f}s")


async def test_a_slow_but_steady_body_within_the_deadline_is_accepted(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(body_read_timeout_seconds=DEADLINE)
    body = push_body(URI, 1)
    reader, writer = await _stalled(
        live, "/hooks/github", push_headers(body, "steady"), body[:10], len(body)
    )
    for start in range(10, len(body), 1024):
        writer.write(body[start : start + 1024])
        await writer.drain()
    reply = await asyncio.wait_for(read_reply(reader), 10)
    writer.close()
    assert reply.status == 201, reply


async def test_content_length_over_the_cap_is_refused_before_the_body(live: Live) -> None:
    body = push_body(URI, 1)
    for path, headers in (
        ("/hooks/github", push_headers(body, "big")),
        (API_CONFIGS, {**live.auth, "Content-Type": "application/json"}),
    ):
        # Headers only: the answer must come without a byte of the body sent.
        reader, writer = await _stalled(live, path, headers, b"", BODY_LIMIT + 1)
        reply = await asyncio.wait_for(read_reply(reader), 5)
        writer.close()
        assert reply.status == 413, (path, reply)
        assert json.loads(reply.body)["reason"] == "RequestEntityTooLarge"
    assert await live.build_count() == 0


async def test_an_endless_chunked_body_is_cut_off_at_the_cap(live: Live) -> None:
    body = push_body(URI, 1)
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    for path, headers in (
        ("/hooks/github", push_headers(body, "endless")),
        (API_CONFIGS, {**live.auth, "Content-Type": "application/json"}),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        writer.write(request_head("POST", path, live.port, headers, length=None))
        reply_task = asyncio.ensure_future(read_reply(reader))
        sent = 0
        # Send until the server answers; 64 MiB would mean it kept reading far past the cap.
        while not reply_task.done() and sent < 64 * 1024 * 1024:
            writer.write(frame)
            try:
                await writer.drain()
            except ConnectionError:
                break
            sent += len(chunk)
        reply = await asyncio.wait_for(reply_task, 10)
        writer.close()
        assert reply.status == 413, (path, reply)
        # Loopback socket buffers hold a few MB; the server stopped near the cap.
        assert sent < 16 * 1024 * 1024, sent
        print(f"{path}: 413 after {sent} bytes sent (cap {BODY_LIMIT})")
    assert await live.build_count() == 0
