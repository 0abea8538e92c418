"""Crash under load: signed GitHub pushes pour into a real ``triggerd serve`` that is killed
with SIGKILL at seeded random points and restarted; no delivery may be lost or doubled.

Each delivery carries its own commit id, so its build is found by ``spec.revision``. A sender
whose connection broke (refused while the server is down, or cut mid-request by the kill)
sends the same delivery again once the server is back, as GitHub's redelivery would: a
delivery the dead server had already committed must then answer 200 ``duplicate``, never a
second build. Builds cannot load the machine: the git uri is a black hole (see helpers).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import aiohttp

from tests.e2e.server import TriggerdServer
from tests.reliability.helpers import (
    all_builds,
    buildconfig,
    commit_of,
    git_black_hole,
    push_body,
    push_headers,
    revision,
)

DELIVERIES = 300
KILLS = 3
CONCURRENCY = 16
SEED = 20261122
#: Attempts per delivery: each broken connection costs one, a restart ends the outage.
ATTEMPTS = 20


async def test_sigkill_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    order = list(range(DELIVERIES))
    rng.shuffle(order)
    kill_points = sorted(rng.sample(range(20, DELIVERIES - 20), KILLS))
    with git_black_hole() as uri:
        server = TriggerdServer(tmp_path / "server", {"maxConcurrentBuilds": 1})
        await asyncio.to_thread(server.start)
        try:
            await asyncio.to_thread(server.apply, buildconfig(uri))
            bodies = {i: push_body(uri, i) for i in order}
            url = f"{server.url}/hooks/github"
            statuses: dict[int, list[int | None]] = {i: [] for i in order}
            up = asyncio.Event()
            up.set()
            answered = 0
            progress = asyncio.Condition()
            gate = asyncio.Semaphore(CONCURRENCY)

            async def deliver(session: aiohttp.ClientSession, i: int) -> None:
                nonlocal answered
                async with gate:
                    for _ in range(ATTEMPTS):
                        await up.wait()
                        try:
                            async with session.post(
                                url, data=bodies[i], headers=push_headers(bodies[i], f"crash-{i}")
                            ) as response:
                                await response.read()
                                statuses[i].append(response.status)
                                break
                        except (aiohttp.ClientError, TimeoutError):
                            statuses[i].append(None)
                async with progress:
                    answered += 1
                    progress.notify_all()

            async def crash_repeatedly() -> None:
                for point in kill_points:
                    async with progress:
                        await progress.wait_for(lambda p=point: answered >= p)  # type: ignore[misc]
                    up.clear()
                    await asyncio.to_thread(server.kill)
                    await asyncio.to_thread(server.start)
                    up.set()

            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await asyncio.gather(crash_repeatedly(), *(deliver(session, i) for i in order))

            assert server.starts == KILLS + 1
            final = {i: s[-1] for i, s in statuses.items()}
            assert all(s in (200, 201) for s in final.values()), Counter(final.values())
            builds = await asyncio.to_thread(all_builds, server)
            per_commit = Counter(revision(b) for b in builds)
            doubled = {c: n for c, n in per_commit.items() if n > 1}
            assert not doubled, doubled
            # Every delivery that was answered 2xx (first try or after a broken connection)
            # has exactly one build.
            assert {commit_of(i) for i in order} == set(per_commit), "a delivery was lost"
            assert len(builds) == DELIVERIES
            # The kills really cut requests short: some deliveries saw a broken connection.
            broken = [i for i, s in statuses.items() if None in s]
            assert broken, "no request was interrupted by a kill; the test proved nothing"

            # Redelivering everything creates nothing: each answer is a duplicate.
            async with aiohttp.ClientSession(timeout=timeout) as session:
                again = await asyncio.gather(
                    *(
                        _post(session, url, bodies[i], push_headers(bodies[i], f"crash-{i}"))
                        for i in order
                    )
                )
            assert Counter(again) == Counter({200: DELIVERIES})
            assert len(await asyncio.to_thread(all_builds, server)) == DELIVERIES
        finally:
            print(f"kills after {kill_points} answered deliveries")
            server.stop()


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> int:
    async with session.post(url, data=body, headers=headers) as response:
        answer = await response.json()
        assert response.status != 200 or answer.get("duplicate") is True, answer
        return response.status
