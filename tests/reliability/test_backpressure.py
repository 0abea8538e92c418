"""Backpressure: intake never waits for execution, and a full queue says so (429 with
Retry-After) instead of losing or half-storing anything.

The fake executor never finishes a build unless told, so with ``maxConcurrentBuilds: 1``
one build runs and everything else queues as New for as long as the test wants.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from tests.reliability.conftest import URI, Live, LiveFactory
from tests.reliability.helpers import CONFIG, commit_of, push_body, push_headers
from triggerd.model.builds import Phase
from triggerd.store.base import BuildQuery

INSTANTIATE = f"/apis/build.openshift.io/v1/namespaces/default/buildconfigs/{CONFIG}/instantiate"


async def _deliver(
    session: aiohttp.ClientSession, live: Live, i: int
) -> tuple[int, dict[str, str]]:
    body = push_body(URI, i)
    async with session.post(
        f"{live.url}/hooks/github", data=body, headers=push_headers(body, f"bp-{i}")
    ) as response:
        await response.read()
        return response.status, dict(response.headers)


async def _phases(live: Live) -> Counter[Phase]:
    page = await live.engine.store.list_builds(BuildQuery())
    return Counter(b.phase for b in page.builds)


async def _revisions(live: Live) -> Counter[str]:
    page = await live.engine.store.list_builds(BuildQuery())
    return Counter(b.spec.revision.commit for b in page.builds if b.spec.revision is not None)


async def test_deliveries_far_beyond_the_build_slots_are_all_stored_as_new(live: Live) -> None:
    gate = asyncio.Semaphore(32)

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        async with gate:
            status, _ = await _deliver(session, live, i)
            return status

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(one(session, i) for i in range(300)))
    assert Counter(statuses) == Counter({201: 300})
    await live.executor.wait_started("default", f"{CONFIG}-1")
    assert await _phases(live) == Counter({Phase.RUNNING: 1, Phase.NEW: 299})


async def test_a_full_queue_answers_429_with_retry_after_and_stores_nothing(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(queue_limit=10)
    auth = {**live.auth, "Content-Type": "application/json"}
    request = {"kind": "BuildRequest", "metadata": {"name": CONFIG}}
    async with aiohttp.ClientSession() as session:
        assert (await _deliver(session, live, 0))[0] == 201
        await live.executor.wait_started("default", f"{CONFIG}-1")
        for i in range(1, 11):
            assert (await _deliver(session, live, i))[0] == 201
        for i in range(11, 16):
            status, headers = await _deliver(session, live, i)
            assert status == 429
            assert int(headers["Retry-After"]) > 0
        async with session.post(f"{live.url}{INSTANTIATE}", json=request, headers=auth) as reply:
            answer = await reply.json()
            assert reply.status == 429, answer
            assert int(reply.headers["Retry-After"]) > 0
            assert answer["reason"] == "TooManyRequests"
        assert await _phases(live) == Counter({Phase.RUNNING: 1, Phase.NEW: 10})

        # The running build ends, the next one starts: one queue place frees up, and the
        # refused delivery sent again (as a provider retries) is accepted, exactly once.
        live.executor.finish("default", f"{CONFIG}-1")
        await live.executor.wait_started("default", f"{CONFIG}-2")
        assert (await _deliver(session, live, 11))[0] == 201
        assert (await _deliver(session, live, 12))[0] == 429
        live.executor.finish("default", f"{CONFIG}-2")
        await live.executor.wait_started("default", f"{CONFIG}-3")
        assert (await _deliver(session, live, 11))[0] == 200  # redelivery: duplicate
    revisions = await _revisions(live)
    assert set(revisions) == {commit_of(i) for i in range(12)}
    assert set(revisions.values()) == {1}


async def test_a_redelivery_is_a_duplicate_even_while_the_queue_is_full(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(queue_limit=2)
    async with aiohttp.ClientSession() as session:
        assert (await _deliver(session, live, 0))[0] == 201
        await live.executor.wait_started("default", f"{CONFIG}-1")
        assert [(await _deliver(session, live, i))[0] for i in (1, 2, 3)] == [201, 201, 429]
        assert (await _deliver(session, live, 1))[0] == 200


async def test_concurrent_deliveries_at_the_limit_are_either_stored_or_refused(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(queue_limit=20)
    async with aiohttp.ClientSession() as session:
        assert (await _deliver(session, live, 0))[0] == 201
        await live.executor.wait_started("default", f"{CONFIG}-1")
        results = await asyncio.gather(*(_deliver(session, live, i) for i in range(1, 61)))
    statuses = {i: status for i, (status, _) in enumerate(results, start=1)}
    assert set(statuses.values()) <= {201, 429}, Counter(statuses.values())
    revisions = await _revisions(live)
    accepted = {commit_of(i) for i, s in statuses.items() if s == 201}
    # Each answer tells the truth: 201 has its one build, 429 has none.
    assert set(revisions) - {commit_of(0)} == accepted
    assert set(revisions.values()) == {1}


async def test_concurrent_deliveries_never_grow_the_queue_past_the_limit(
    live_factory: LiveFactory,
) -> None:
    limit = 20
    live = await live_factory(queue_limit=limit)
    async with aiohttp.ClientSession() as session:
        assert (await _deliver(session, live, 0))[0] == 201
        await live.executor.wait_started("default", f"{CONFIG}-1")
        await asyncio.gather(*(_deliver(session, live, i) for i in range(1, 61)))
    assert (await _phases(live))[Phase.NEW] <= limit
