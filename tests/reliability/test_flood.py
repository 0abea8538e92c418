"""A flood of 10,000 deliveries with invalid signatures against a real ``triggerd serve``:
every one is refused 401, nothing is stored, and ``/healthz`` stays quick throughout.

Half go to the org-wide route (parsed, routed, then refused by the HMAC check), half to the
per-BuildConfig route with the right URL secret and a wrong signature. A prober on its own
connection asks ``/healthz`` back to back for as long as the flood lasts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.e2e.server import TriggerdServer
from tests.reliability.helpers import (
    CONFIG,
    SECRET,
    all_builds,
    buildconfig,
    post,
    push_body,
    push_headers,
)

REQUESTS = 10_000
CONNECTIONS = 32
#: The slowest /healthz answer allowed during the flood (a shared 2-core machine).
HEALTHZ_LIMIT = 1.0
URI = "https://git.example.com/reliability/flood.git"


async def test_ten_thousand_bad_signatures_store_nothing_and_healthz_stays_quick(
    tmp_path: Path,
) -> None:
    server = TriggerdServer(tmp_path / "server", {"maxConcurrentBuilds": 1})
    await asyncio.to_thread(server.start)
    try:
        await asyncio.to_thread(server.apply, buildconfig(URI))
        body = push_body(URI, 1)
        forged = push_headers(body, "forged", secret="not-the-secret")
        routes = [
            f"{server.url}/hooks/github",
            f"{server.url}/apis/build.openshift.io/v1/namespaces/default/buildconfigs/"
            f"{CONFIG}/webhooks/{SECRET}/github",
        ]
        statuses: Counter[int] = Counter()
        probes: list[float] = []
        flooding = True
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)

        async def flood(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                headers = {**forged, "X-GitHub-Delivery": f"forged-{i}"}
                async with session.post(routes[i % 2], data=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1

        async def probe() -> None:
            async with aiohttp.ClientSession() as session:
                while flooding:
                    started = time.monotonic()
                    async with session.get(f"{server.url}/healthz") as response:
                        await response.read()
                        assert response.status == 200
                    probes.append(time.monotonic() - started)

        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        prober = asyncio.ensure_future(probe())
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(flood(session) for _ in range(CONNECTIONS)))
        flooding = False
        await prober
        elapsed = time.monotonic() - started

        assert statuses == Counter({401: REQUESTS})
        assert await asyncio.to_thread(all_builds, server) == []
        probes.sort()
        print(
            f"{REQUESTS} refused in {elapsed:.1f}s ({REQUESTS / elapsed:.0f}/s); "
            f"{len(probes)} /healthz probes, p50 {probes[len(probes) // 2] * 1000:.1f} ms, "
            f"max {probes[-1] * 1000:.1f} ms"
        )
        assert len(probes) >= 10
        assert probes[-1] < HEALTHZ_LIMIT
        # Still serving: a correctly signed delivery is accepted, and is the only build.
        status, answer = await asyncio.to_thread(
            post, routes[0], body, push_headers(body, "genuine")
        )
        assert status == 201, answer
        assert len(await asyncio.to_thread(all_builds, server)) == 1
    finally:
        server.stop()
