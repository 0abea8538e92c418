"""Polling registry tags: one watcher per distinct (registry, repository, tag).

The runtime tells the watcher which tags its ImageChange triggers and scheduled image
stream imports need (:meth:`TagWatcher.set_watches`, keyed by ``registry/repo:tag`` so a
tag named by 500 BuildConfigs is polled once, at the shortest interval asked for). Each
poll is one manifest HEAD through :class:`~triggerd.images.registry_client.RegistryClient`;
a digest different from the last one seen is handed to ``on_change`` (the runtime decides
what builds). Intervals carry jitter; 429/5xx/unreachable put the whole registry host into
exponential backoff (Retry-After honoured, capped), and when it recovers its tags are
spread over a window instead of all polled at once, so an outage never ends in a burst.
Clock and sleep are injected so tests need no real waiting. Never starts builds itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from triggerd.errors import PermanentError, TemporaryError
from triggerd.image_events import ImagePush, RegistryKind, tag_key
from triggerd.images import references
from triggerd.images import watch_metrics as metrics
from triggerd.images.registry_client import RegistryAuthError, TagNotFound
from triggerd.settings import MIN_POLL_INTERVAL_SECONDS

log = logging.getLogger(__name__)

HeadDigest = Callable[[references.ImageReference], Awaitable[str]]
#: (the push, the monotonic time it was observed)
OnChange = Callable[[ImagePush, float], Awaitable[None]]
#: (watch key, error message or "" when the error cleared)
OnError = Callable[[str, str], Awaitable[None]]


#: (watch key, the push, the digest before it, when it was seen)
_Change = tuple[str, ImagePush, "str | None", float]


class PollResult(StrEnum):
    FIRST = "first"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    NOT_FOUND = "not_found"
    AUTH_ERROR = "auth_error"
    TEMPORARY_ERROR = "temporary_error"
    DEFERRED = "deferred"


@dataclass(slots=True)
class _Watch:
    ref: references.ImageReference
    interval: float
    digest: str | None = None
    error: str = ""
    #: the PollResult value of the error ("" when healthy)
    reason: str = ""
    #: bumps on every reschedule so stale heap entries are skipped
    generation: int = 0


@dataclass(slots=True)
class _HostState:
    failures: int = 0
    until: float = 0.0
    delay: float = 0.0


class TagWatcher:
    """Polls watched tags on their intervals; reports digest changes and errors."""

    def __init__(
        self,
        head: HeadDigest,
        on_change: OnChange,
        *,
        default_interval: float,
        on_error: OnError | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        jitter: float = 0.1,
        base_backoff: float = 2.0,
        max_backoff: float = 300.0,
        concurrency: int = 64,
    ) -> None:
        self._head = head
        self._on_change = on_change
        self._on_error = on_error
        self.default_interval = default_interval
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._jitter = jitter
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._semaphore = asyncio.Semaphore(concurrency)
        self._watches: dict[str, _Watch] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._hosts: dict[str, _HostState] = {}
        self._wake = asyncio.Event()

    # What to watch ------------------------------------------------------------------------
    def set_watches(
        self, wanted: Mapping[str, tuple[references.ImageReference, float | None]]
    ) -> None:
        """Replace the watched set: key → (tag reference, interval or None for the default).

        Tags already watched keep their last digest and schedule; new ones are due now.
        """
        for key in list(self._watches):
            if key not in wanted:
                del self._watches[key]
        now = self._clock()
        for key, (ref, interval) in wanted.items():
            every = self._interval(interval)
            current = self._watches.get(key)
            if current is None:
                self._watches[key] = _Watch(ref=ref, interval=every)
                self._schedule(key, now)
            elif current.interval != every:
                current.interval = every
                self._schedule(key, now + self._jittered(every))
        metrics.WATCHED_TAGS.set(len(self._watches))
        self._wake.set()

    def watch(self, ref: references.ImageReference, interval: float | None = None) -> str:
        """Add one tag (if new, or at a shorter interval); returns its key."""
        key = tag_key(ref)
        current = self._watches.get(key)
        every = self._interval(interval)
        if current is None:
            self._watches[key] = _Watch(ref=ref, interval=every)
            self._schedule(key, self._clock())
        elif every < current.interval:
            current.interval = every
        metrics.WATCHED_TAGS.set(len(self._watches))
        self._wake.set()
        return key

    def _interval(self, interval: float | None) -> float:
        # Settings and the API refuse shorter ones; this keeps any other caller from
        # turning the loop into a busy one.
        return max(MIN_POLL_INTERVAL_SECONDS, interval or self.default_interval)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._watches)

    def last_digest(self, key: str) -> str | None:
        watch = self._watches.get(key)
        return watch.digest if watch else None

    def last_error(self, key: str) -> str:
        watch = self._watches.get(key)
        return watch.error if watch else ""

    def last_error_reason(self, key: str) -> PollResult | None:
        """What kind of error the last poll of ``key`` hit (None when it succeeded)."""
        watch = self._watches.get(key)
        return PollResult(watch.reason) if watch and watch.reason else None

    def forget_digests(self) -> None:
        """Forget every digest seen (a replica that stops leading must not act on what it
        saw while it led: the next leader's knowledge is the truth). The schedule stays."""
        for watch in self._watches.values():
            watch.digest = None

    def note_digest(self, key: str, digest: str | None) -> None:
        """A notification confirmed ``digest``: the next poll need not report it again.
        None forgets the tag's digest (a move not acted on must be reported again)."""
        watch = self._watches.get(key)
        if watch is not None:
            watch.digest = digest

    def backoff(self, host: str) -> float:
        """The current backoff delay of ``host`` in seconds (0 when healthy)."""
        state = self._hosts.get(host)
        return state.delay if state and state.failures else 0.0

    # Polling ------------------------------------------------------------------------------
    async def poll(self, key: str) -> PollResult:
        """Poll one watched tag now (unless its host is backing off) and act on a change."""
        result, change = await self._poll_scheduled(key)
        if change is not None:
            await self._deliver(*change)
        return result

    async def _poll_scheduled(self, key: str) -> tuple[PollResult, _Change | None]:
        watch = self._watches.get(key)
        if watch is None:
            raise KeyError(key)
        host = watch.ref.registry
        state = self._hosts.get(host)
        now = self._clock()
        if state is not None and now < state.until:
            # Spread the host's tags over one interval after the backoff ends.
            self._schedule(key, state.until + self._rng.uniform(0, min(watch.interval, 60.0)))
            metrics.POLLS.labels(PollResult.DEFERRED.value).inc()
            return PollResult.DEFERRED, None
        result, change = await self._poll(key, watch)
        metrics.POLLS.labels(result.value).inc()
        if key in self._watches and result is not PollResult.TEMPORARY_ERROR:
            self._schedule(key, self._clock() + self._jittered(watch.interval))
        return result, change

    async def _poll(self, key: str, watch: _Watch) -> tuple[PollResult, _Change | None]:
        host = watch.ref.registry
        try:
            async with self._semaphore:
                digest = await self._head(watch.ref)
        except TemporaryError as e:
            self._back_off(key, watch, e)
            return PollResult.TEMPORARY_ERROR, None
        except RegistryAuthError as e:
            await self._set_error(key, watch, str(e), PollResult.AUTH_ERROR)
            return PollResult.AUTH_ERROR, None
        except TagNotFound as e:
            await self._set_error(key, watch, str(e), PollResult.NOT_FOUND)
            return PollResult.NOT_FOUND, None
        except PermanentError as e:
            await self._set_error(key, watch, str(e), PollResult.AUTH_ERROR)
            return PollResult.AUTH_ERROR, None
        self._recovered(host)
        if watch.error:
            await self._set_error(key, watch, "", None)
        previous = watch.digest
        if previous == digest:
            return PollResult.UNCHANGED, None
        # Recorded before anyone is told, so that a batch's changes are all visible to the
        # first handler (several triggers of one config moving together make one build).
        watch.digest = digest
        metrics.DIGESTS_SEEN.labels(RegistryKind.POLL.value).inc()
        push = ImagePush(
            source=RegistryKind.POLL,
            delivery_id=None,
            registry=watch.ref.registry,
            repository=watch.ref.repository,
            tag=watch.ref.tag or "latest",
            digest=digest,
        )
        result = PollResult.FIRST if previous is None else PollResult.CHANGED
        return result, (key, push, previous, self._clock())

    async def _deliver(self, key: str, push: ImagePush, previous: str | None, seen: float) -> None:
        try:
            await self._on_change(push, seen)
        except Exception:
            # The runtime failed to act (store busy): forget the digest so the next poll
            # reports it again rather than losing the change.
            watch = self._watches.get(key)
            if watch is not None and watch.digest == push.digest:
                watch.digest = previous
            log.exception("acting on %s moving to %s failed", key, push.digest)

    async def _batch(self, keys: list[str]) -> Counter[PollResult]:
        polled = await asyncio.gather(*(self._poll_scheduled(key) for key in keys))
        for _, change in polled:
            if change is not None:
                await self._deliver(*change)
        return Counter(result for result, _ in polled)

    async def _set_error(
        self, key: str, watch: _Watch, message: str, reason: PollResult | None
    ) -> None:
        if watch.error == message:
            return
        watch.error = message
        watch.reason = reason.value if reason is not None else ""
        if self._on_error is not None:
            await self._on_error(key, message)

    def _back_off(self, key: str, watch: _Watch, error: TemporaryError) -> None:
        host = watch.ref.registry
        state = self._hosts.setdefault(host, _HostState())
        now = self._clock()
        if now >= state.until:
            # Several tags of one host failing in the same burst count as one failure.
            state.failures += 1
        delay = min(self._max_backoff, self._base_backoff * 2 ** (state.failures - 1))
        delay = min(self._max_backoff, max(delay, error.delay))
        state.until = max(state.until, now + delay)
        state.delay = delay
        metrics.BACKOFF_HOSTS.set(sum(1 for s in self._hosts.values() if s.failures))
        metrics.BACKOFF_SECONDS.labels(host).set(delay)
        log.info("registry %s: %s; backing off %.1fs", host, error, delay)
        self._schedule(key, state.until + self._rng.uniform(0, min(watch.interval, 60.0)))

    def _recovered(self, host: str) -> None:
        state = self._hosts.get(host)
        if state is not None and state.failures:
            state.failures = 0
            state.until = 0.0
            state.delay = 0.0
            metrics.BACKOFF_HOSTS.set(sum(1 for s in self._hosts.values() if s.failures))
            metrics.BACKOFF_SECONDS.labels(host).set(0)

    def _jittered(self, interval: float) -> float:
        return interval * (1 + self._rng.uniform(-self._jitter, self._jitter))

    def _schedule(self, key: str, when: float) -> None:
        watch = self._watches[key]
        watch.generation += 1
        heapq.heappush(self._heap, (when, watch.generation, key))

    def _pop_due(self, now: float) -> list[str]:
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            _, generation, key = heapq.heappop(self._heap)
            watch = self._watches.get(key)
            if watch is not None and watch.generation == generation:
                due.append(key)
        return due

    def next_due(self) -> float | None:
        while self._heap:
            when, generation, key = self._heap[0]
            watch = self._watches.get(key)
            if watch is not None and watch.generation == generation:
                return when
            heapq.heappop(self._heap)
        return None

    async def run_due(self) -> Counter[PollResult]:
        """Poll every tag that is due now, concurrently (bounded); returns the results."""
        return await self._batch(self._pop_due(self._clock()))

    async def run_cycle(self) -> Counter[PollResult]:
        """Poll every watched tag once, now, whatever its schedule (tests, benchmarks)."""
        return await self._batch(list(self._watches))

    async def run_forever(self) -> None:
        """Poll tags as they fall due until cancelled (a new watch wakes it early)."""
        while True:
            when = self.next_due()
            now = self._clock()
            if when is None or when > now:
                self._wake.clear()
                wait = 3600.0 if when is None else when - now
                woken = asyncio.ensure_future(self._wake.wait())
                slept = asyncio.ensure_future(self._sleep(wait))
                try:
                    await asyncio.wait({woken, slept}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (woken, slept):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                continue
            await self.run_due()
