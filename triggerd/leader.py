"""Leader election on a coordination.k8s.io/v1 Lease, so one replica of many schedules.

Every replica runs a :class:`LeaderElector`; the one holding the Lease is the leader and is
the only one that schedules builds, creates Jobs, watches, polls and prunes (the engine asks
:attr:`LeaderElector.is_leader` and is told of changes through the ``on_change``
callback). The holder renews the Lease every ``renew_interval``; every write carries the
resourceVersion it read, so of two replicas racing for an expired Lease exactly one wins and
a leader whose renewal hits a 409 (someone else took the Lease) stops leading at once.

Two tasks keep the timing honest:

- the *campaign* task only talks to the Lease. Each round is cut off at the leader's renew
  deadline (``renew_deadline_seconds``, two thirds of the lease by default, like client-go's
  10 s of 15 s), so an API server that hangs cannot keep a leader leading past the moment
  another replica may take over: when a renewal cannot be confirmed by then, the leader
  stops leading by itself. Others count the lease from when *they* saw it change, which is
  after this replica started the renewal the deadline is measured from.
- the *leadership* task runs ``on_change`` (recovery, the first housekeeping pass) so that
  slow work never delays a renewal. A failed start of leadership is retried with backoff for
  as long as this replica leads; losing the Lease cancels a start still in progress and
  then stops leading.

On :meth:`LeaderElector.stop` (SIGTERM) a leader first stops leading (``on_change(False)``
returns when the engine has stopped scheduling) and only then releases the Lease, so a
successor takes over at once but never while this replica still acts. Expiry is judged like
client-go does: by when this replica last saw the record change (local monotonic time), not
by comparing clocks with the holder. Any error of a round (the API unreachable, a dropped
connection, a domain error) is logged and the next round tries again: the campaign never dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from triggerd.kube import Kube, KubeError, path_for

log = logging.getLogger(__name__)

OnChange = Callable[[bool], Awaitable[None]]

#: A failed start of leadership is retried after this long, doubling up to the maximum.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


def format_micro_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_seconds: int = 15,
        renew_interval_seconds: float = 5.0,
        renew_deadline_seconds: float | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        if renew_interval_seconds >= lease_duration_seconds:
            raise ValueError("renew interval must be shorter than the lease duration")
        deadline = renew_deadline_seconds
        if deadline is None:
            # client-go's 10 s of 15 s; with an interval that long, halfway to the lease
            deadline = lease_duration_seconds * 2 / 3
            if deadline <= renew_interval_seconds:
                deadline = (renew_interval_seconds + lease_duration_seconds) / 2
        if not renew_interval_seconds < deadline < lease_duration_seconds:
            raise ValueError("the renew deadline must lie between the interval and the lease")
        self.kube = kube
        self.path = path_for("coordination.k8s.io/v1", "leases", namespace, name)
        self.collection = path_for("coordination.k8s.io/v1", "leases", namespace)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = lease_duration_seconds
        self.renew_interval = renew_interval_seconds
        #: a leader that has not confirmed a renewal started this long ago stops leading
        self.renew_deadline = deadline
        self.on_change = on_change
        self._leader = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        #: when the round that last renewed (or took) the Lease began (monotonic)
        self._last_renewal = 0.0
        self._task: asyncio.Task[None] | None = None
        #: what the engine was last told successfully (on_change completed)
        self._applied = False
        self._worker: asyncio.Task[None] | None = None
        self._work = asyncio.Event()
        #: the on_change(True) call in progress, cancelled when the Lease is lost meanwhile
        self._gaining: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set on every gain/loss (for waiters and tests)
        #: set whenever the engine has been told of the current state (for tests)
        self.settled = asyncio.Event()
        self.settled.set()

    @property
    def is_leader(self) -> bool:
        return self._leader

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"lease {self.name}")
        self._ensure_worker()

    async def stop(self) -> None:
        """Stop campaigning; a leader stops leading first, then releases the Lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        held = self._leader
        self._set(False)
        if self._worker is not None:
            # The worker now stops leading (cancelling a start in progress); wait for it.
            await self._wait_settled()
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._applied:
            await self._tell(False)  # the worker was cut off before it could
        if held:
            await self._release()

    async def _wait_settled(self) -> None:
        while not (self._applied is self._leader and self._gaining is None):
            if self._worker is None or self._worker.done():
                return
            self.settled.clear()
            await self.settled.wait()

    # Campaign ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                # result when the round ends just as the task is cancelled, and this loop
                # would then outlive stop() (and the event loop's own shutdown).
                async with asyncio.timeout(self._round_budget(began)):
                    await self.try_once()
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                log.warning("lease %s: the API server did not answer in time", self.name)
            except KubeError as e:
                log.warning("lease %s: API error %s %s", self.name, e.status, e.reason)
            except Exception:
                # Whatever a round hit, the next one tries again: the campaign must not die.
                log.exception("lease %s: election round failed", self.name)
            if self._leader and time.monotonic() - self._last_renewal >= self.renew_deadline:
                log.warning(
                    "lease %s: renewal not confirmed within %.1f s; stepping down",
                    self.name,
                    self.renew_deadline,
                )
                self._set(False)
            elapsed = time.monotonic() - began
            await asyncio.sleep(max(0.0, self.renew_interval - elapsed))

    def _round_budget(self, began: float) -> float:
        """How long this round may take: a leader must know before its renew deadline."""
        if self._leader:
            return max(0.001, self._last_renewal + self.renew_deadline - began)
        return float(self.duration)

    async def try_once(self) -> bool:
        """One acquire-or-renew round; returns whether this replica leads afterwards."""
        began = time.monotonic()
        now = datetime.now(UTC)
        try:
            lease = await self.kube.get(self.path)
        except KubeError as e:
            if not e.not_found:
                raise
            return await self._create(now, began)
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        if holder and holder != self.identity:
            duration = int(spec.get("leaseDurationSeconds") or self.duration)
            if time.monotonic() - self._observed_at < duration:
                self._set(False)
                return False
        new_spec = dict(spec)
        new_spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=self.duration,
            renewTime=format_micro_time(now),
        )
        if holder != self.identity:
            new_spec["acquireTime"] = format_micro_time(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease["metadata"]["resourceVersion"],
            },
            "spec": new_spec,
        }
        try:
            await self.kube.replace(self.path, body)
        except KubeError as e:
            if not e.conflict:
                raise
            # Someone else wrote the Lease since we read it: they lead (or will).
            self._set(False)
            return False
        self._renewed(began)
        return True

    async def _create(self, now: datetime, began: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration,
                "acquireTime": format_micro_time(now),
                "renewTime": format_micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            await self.kube.create(self.collection, body)
        except KubeError as e:
            if not e.conflict:
                raise
            self._set(False)
            return False
        self._renewed(began)
        return True

    def _renewed(self, began: float) -> None:
        if time.monotonic() - began >= self.renew_deadline:
            # Confirmed too late: others may already count the lease as expired.
            log.warning("lease %s: renewal confirmed after the deadline; not leading", self.name)
            self._set(False)
            return
        self._last_renewal = began
        self._set(True)

    async def _release(self) -> None:
        """Give the Lease up so a successor need not wait for it to expire."""
        try:
            lease = await self.kube.get(self.path)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity="", leaseDurationSeconds=1,
                        renewTime=format_micro_time(datetime.now(UTC)))  # fmt: skip
            await self.kube.replace(
                self.path,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "resourceVersion": lease["metadata"]["resourceVersion"],
                    },
                    "spec": spec,
                },
            )
        except KubeError as e:
            log.warning("lease %s: release failed (%s); it will expire", self.name, e.status)

    # Leadership work -----------------------------------------------------------------------
    def _set(self, leader: bool) -> None:
        """Record a gain or loss at once (``is_leader`` answers from here); the engine is
        told by the leadership task, so a renewal never waits for it."""
        if leader == self._leader:
            return
        self._leader = leader
        log.info("lease %s: %s %s leadership", self.name, self.identity,
                 "gained" if leader else "lost")  # fmt: skip
        self.changed.set()
        self.changed = asyncio.Event()
        if not leader and self._gaining is not None:
            self._gaining.cancel()  # recovery must not go on under a lost Lease
        self._ensure_worker()
        self._work.set()

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._lead_forever(), name=f"leading {self.name}")

    async def _lead_forever(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            if self._applied is self._leader:
                self.settled.set()
                await self._work.wait()
                self._work.clear()
                continue
            if not self._leader:
                await self._tell(False)
                delay = RETRY_FIRST_SECONDS
                continue
            self._gaining = asyncio.create_task(self._call(True), name=f"gaining {self.name}")
            try:
                await asyncio.wait({self._gaining})
            finally:
                gaining, self._gaining = self._gaining, None
            if gaining.cancelled():
                # The Lease was lost while the engine started leading: undo what it began.
                self._applied = True
                continue
            error = gaining.exception()
            if error is None:
                self._applied = True
                delay = RETRY_FIRST_SECONDS
                continue
            log.error(
                "lease %s: starting to lead failed (%s: %s); retrying in %.1f s",
                self.name,
                type(error).__name__,
                error,
                delay,
            )
            # Half-started work is stopped before the next attempt starts it again.
            await self._call_quietly(False)
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._work.wait()
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _tell(self, leader: bool) -> None:
        await self._call_quietly(leader)
        self._applied = leader

    async def _call(self, leader: bool) -> None:
        if self.on_change is not None:
            await self.on_change(leader)

    async def _call_quietly(self, leader: bool) -> None:
        try:
            await self._call(leader)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lease %s: on_change(%s) failed", self.name, leader)
