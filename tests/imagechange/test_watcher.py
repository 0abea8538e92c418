"""The tag watcher with a scripted registry and a fake clock: dedup, changes, backoff."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from triggerd import metrics
from triggerd.errors import TemporaryError
from triggerd.image_events import ImagePush, tag_key
from triggerd.images import references
from triggerd.images.registry_client import RegistryAuthError, TagNotFound
from triggerd.images.watcher import PollResult, TagWatcher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Script:
    """What the "registry" answers per tag key; counts HEADs."""

    def __init__(self) -> None:
        self.digests: dict[str, str] = {}
        self.down = False
        self.errors: dict[str, Exception] = {}
        self.heads: list[str] = []

    async def head(self, ref: references.ImageReference) -> str:
        key = tag_key(ref)
        self.heads.append(key)
        if self.down:
            raise TemporaryError("registry answered 503", delay=0)
        if key in self.errors:
            raise self.errors[key]
        return self.digests[key]


class Changes:
    def __init__(self) -> None:
        self.seen: list[ImagePush] = []
        self.errors: list[tuple[str, str]] = []

    async def on_change(self, push: ImagePush, observed: float) -> None:
        self.seen.append(push)

    async def on_error(self, key: str, message: str) -> None:
        self.errors.append((key, message))


def make(script: Script, changes: Changes, clock: Clock, **kw: float) -> TagWatcher:
    return TagWatcher(
        script.head,
        changes.on_change,
        on_error=changes.on_error,
        default_interval=60.0,
        clock=clock,
        rng=random.Random(1),
        **kw,  # type: ignore[arg-type]
    )


REF = references.parse("127.0.0.1:5000/team/base:latest")
KEY = tag_key(REF)


async def test_one_watch_per_distinct_tag_at_the_shortest_interval() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    script.digests[KEY] = "sha256:" + "1" * 64
    watcher = make(script, changes, clock)
    for interval in (120.0, 30.0, None):
        watcher.watch(references.parse("127.0.0.1:5000/team/base"), interval)
    assert watcher.keys == {KEY}
    results = await watcher.run_due()
    assert results == {PollResult.FIRST: 1}
    assert script.heads == [KEY]
    clock.now = 25.0
    assert await watcher.run_due() == {}
    clock.now = 34.0  # 30 s ± 10 % jitter
    assert await watcher.run_due() == {PollResult.UNCHANGED: 1}


async def test_changes_are_reported_once() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    script.digests[KEY] = "sha256:" + "1" * 64
    watcher = make(script, changes, clock)
    watcher.set_watches({KEY: (REF, None)})
    await watcher.run_cycle()
    await watcher.run_cycle()
    script.digests[KEY] = "sha256:" + "2" * 64
    assert await watcher.run_cycle() == {PollResult.CHANGED: 1}
    assert await watcher.run_cycle() == {PollResult.UNCHANGED: 1}
    assert [p.digest for p in changes.seen] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]


async def test_outage_backs_off_exponentially_and_recovers_without_a_burst() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    refs = [references.parse(f"127.0.0.1:5000/r{i}:latest") for i in range(20)]
    for r in refs:
        script.digests[tag_key(r)] = "sha256:" + "1" * 64
    watcher = make(script, changes, clock, base_backoff=2.0, max_backoff=30.0)
    watcher.set_watches({tag_key(r): (r, 10.0) for r in refs})
    await watcher.run_due()
    assert len(changes.seen) == 20
    script.down = True
    delays = []
    for _ in range(6):
        nxt = watcher.next_due()
        assert nxt is not None
        clock.now = nxt
        heads_before = len(script.heads)
        await watcher.run_due()
        delays.append(watcher.backoff("127.0.0.1:5000"))
        # While backing off, polls are deferred, not sent.
        clock.now += 0.5
        await watcher.run_due()
        assert len(script.heads) - heads_before <= 20
    assert max(delays) <= 30.0
    assert delays[0] < delays[-1]  # grew
    script.down = False
    before = len(script.heads)
    clock.now += 120.0
    # Recovered: every tag is polled again, nothing changed, no build-worthy change.
    while (nxt := watcher.next_due()) is not None and nxt <= clock.now:
        await watcher.run_due()
    assert len(script.heads) - before >= 20
    assert len(changes.seen) == 20
    assert watcher.backoff("127.0.0.1:5000") == 0.0


async def test_recovery_is_spread_not_a_burst() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    refs = [references.parse(f"127.0.0.1:5000/r{i}:latest") for i in range(50)]
    for r in refs:
        script.digests[tag_key(r)] = "d"
    watcher = make(script, changes, clock, base_backoff=5.0, max_backoff=5.0)
    watcher.set_watches({tag_key(r): (r, 60.0) for r in refs})
    script.down = True
    await watcher.run_due()
    script.down = False
    # After the backoff ends, the 50 tags come due spread over up to one interval.
    due_times = sorted(t for t, _, _ in watcher._heap)
    assert due_times[-1] - due_times[0] > 20.0


async def test_retry_after_is_honoured() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    script.errors[KEY] = TemporaryError("429", delay=120.0)
    watcher = make(script, changes, clock, max_backoff=600.0)
    watcher.set_watches({KEY: (REF, None)})
    await watcher.run_due()
    assert watcher.backoff("127.0.0.1:5000") == pytest.approx(120.0)


async def test_auth_errors_are_reported_and_cleared() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    script.errors[KEY] = RegistryAuthError("denied (insufficient scope)")
    watcher = make(script, changes, clock)
    watcher.set_watches({KEY: (REF, None)})
    assert await watcher.run_cycle() == {PollResult.AUTH_ERROR: 1}
    await watcher.run_cycle()
    assert changes.errors == [(KEY, "denied (insufficient scope)")]
    del script.errors[KEY]
    script.digests[KEY] = "d1"
    await watcher.run_cycle()
    assert changes.errors[-1] == (KEY, "")
    assert watcher.last_error(KEY) == ""


async def test_a_failed_action_is_reported_again() -> None:
    script, clock = Script(), Clock()
    script.digests[KEY] = "d1"
    calls: list[str] = []

    async def flaky(push: ImagePush, observed: float) -> None:
        calls.append(push.digest or "")
        if len(calls) == 1:
            raise RuntimeError("store busy")

    watcher = TagWatcher(script.head, flaky, default_interval=60.0, clock=clock)
    watcher.set_watches({KEY: (REF, None)})
    await watcher.run_cycle()
    await watcher.run_cycle()
    assert calls == ["d1", "d1"]
    await watcher.run_cycle()
    assert calls == ["d1", "d1"]


async def test_unwatched_tags_are_dropped() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    script.digests[KEY] = "d"
    watcher = make(script, changes, clock)
    watcher.set_watches({KEY: (REF, None)})
    watcher.set_watches({})
    assert watcher.keys == frozenset()
    assert await watcher.run_due() == {}


async def test_run_forever_polls_each_tag_at_its_jittered_interval() -> None:
    """The production loop with a fake clock: sleeping advances it, so ten minutes of
    polling run at once and every gap between two polls of a tag can be checked."""
    script, changes, clock = Script(), Changes(), Clock()
    refs = [references.parse(f"127.0.0.1:5000/r{i}:latest") for i in range(3)]
    for r in refs:
        script.digests[tag_key(r)] = "d"
    polled: dict[str, list[float]] = {}

    async def head(ref: references.ImageReference) -> str:
        polled.setdefault(tag_key(ref), []).append(clock.now)
        return await script.head(ref)

    class Enough(Exception):
        pass

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        if clock.now >= 600.0:
            raise Enough
        await asyncio.sleep(0)

    watcher = TagWatcher(
        head,
        changes.on_change,
        default_interval=60.0,
        clock=clock,
        sleep=sleep,
        rng=random.Random(7),
        jitter=0.1,
    )
    watcher.set_watches({tag_key(refs[0]): (refs[0], None), tag_key(refs[1]): (refs[1], 30.0)})
    watcher.watch(refs[2], 0.2)  # below the minimum: polled every second, not in a spin
    with pytest.raises(Enough):
        await watcher.run_forever()
    for key, every in ((tag_key(refs[0]), 60.0), (tag_key(refs[1]), 30.0)):
        times = polled[key]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert times[0] == 0.0  # a new watch is due at once
        assert all(every * 0.9 <= g <= every * 1.1 for g in gaps), gaps
        assert len(set(gaps)) > 1  # jittered
        assert len(times) == pytest.approx(600.0 / every, abs=2)
    fast = polled[tag_key(refs[2])]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(fast))
    assert len(fast) <= 600 / 0.9 + 1


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_poll_metrics_count_results_backoff_and_digests() -> None:
    script, changes, clock = Script(), Changes(), Clock()
    other = references.parse("127.0.0.1:5000/missing:latest")
    denied = references.parse("127.0.0.1:5000/denied:latest")
    script.digests[KEY] = "sha256:" + "1" * 64
    script.errors[tag_key(other)] = TagNotFound("127.0.0.1:5000/missing:latest does not exist")
    script.errors[tag_key(denied)] = RegistryAuthError("denied")
    watcher = make(script, changes, clock, base_backoff=4.0)

    def polls(result: str) -> float:
        return sample("triggerd_image_polls_total", {"result": result})

    before = {r.value: polls(r.value) for r in PollResult}
    seen_before = sample("triggerd_image_digests_seen_total", {"source": "poll"})
    watcher.set_watches(
        {KEY: (REF, None), tag_key(other): (other, None), tag_key(denied): (denied, None)}
    )
    assert sample("triggerd_image_watched_tags") == 3
    await watcher.run_cycle()
    await watcher.run_cycle()
    script.digests[KEY] = "sha256:" + "2" * 64
    await watcher.run_cycle()

    def delta(result: PollResult) -> float:
        return polls(result.value) - before[result.value]

    assert delta(PollResult.FIRST) == 1
    assert delta(PollResult.UNCHANGED) == 1
    assert delta(PollResult.CHANGED) == 1
    assert delta(PollResult.NOT_FOUND) == 3
    assert delta(PollResult.AUTH_ERROR) == 3
    assert sample("triggerd_image_digests_seen_total", {"source": "poll"}) - seen_before == 2
    # An outage: the first failure puts the host into backoff, its other tags are deferred
    # (not sent); the backoff is exported, then cleared when the host recovers.
    script.down = True
    await watcher.run_cycle()
    assert delta(PollResult.TEMPORARY_ERROR) == 1
    assert delta(PollResult.DEFERRED) == 2
    assert sample("triggerd_image_poll_backoff_hosts") == 1
    assert sample("triggerd_image_poll_backoff_seconds", {"registry": "127.0.0.1:5000"}) == 4.0
    await watcher.run_cycle()
    assert delta(PollResult.DEFERRED) == 5
    script.down = False
    clock.now += 100.0
    await watcher.run_cycle()
    assert sample("triggerd_image_poll_backoff_hosts") == 0
    assert sample("triggerd_image_poll_backoff_seconds", {"registry": "127.0.0.1:5000"}) == 0
