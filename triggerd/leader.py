"""Leader election on a coordination.k8s.io/v1 Lease, so one replica of many schedules.

Every replica runs a :class:`LeaderElector`; the one holding the Lease is the leader and is
the only one that schedules builds, creates Jobs, watches, polls and prunes (the engine asks
:attr:`LeaderElector.is_leader` and is told of changes through the ``on_change``
callback). The holder renews the Lease every ``renew_interval``; every write carries the
resourceVersion it read, so of two replicas racing for an expired Lease exactly one wins and
a leader whose renewal hits a 409 (someone else took the Lease) stops leading at once. A
leader that cannot renew for a whole lease duration steps down by itself, before anybody
else may take over. On :meth:`LeaderElector.stop` a leader releases the Lease so a
successor takes over immediately instead of after the lease duration.

Expiry is judged like client-go does: by when this replica last saw the record change
(local monotonic time), not by comparing clocks with the holder.
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
        on_change: OnChange | None = None,
    ) -> None:
        if renew_interval_seconds >= lease_duration_seconds:
            raise ValueError("renew interval must be shorter than the lease duration")
        self.kube = kube
        self.path = path_for("coordination.k8s.io/v1", "leases", namespace, name)
        self.collection = path_for("coordination.k8s.io/v1", "leases", namespace)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = lease_duration_seconds
        self.renew_interval = renew_interval_seconds
        self.on_change = on_change
        self._leader = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renewal = 0.0
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set on every gain/loss (for waiters and tests)

    @property
    def is_leader(self) -> bool:
        return self._leader

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"lease {self.name}")

    async def stop(self) -> None:
        """Stop campaigning; a leader releases the Lease and reports the loss."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._leader:
            await self._release()
            await self._set(False)

    async def _run(self) -> None:
        while True:
            try:
                await self.try_once()
            except KubeError as e:
                log.warning("lease %s: API error %s", self.name, e.status)
            if self._leader and time.monotonic() - self._last_renewal > self.duration:
                log.warning("lease %s: could not renew in time; stepping down", self.name)
                await self._set(False)
            await asyncio.sleep(self.renew_interval)

    async def try_once(self) -> bool:
        """One acquire-or-renew round; returns whether this replica leads afterwards."""
        now = datetime.now(UTC)
        try:
            lease = await self.kube.get(self.path)
        except KubeError as e:
            if not e.not_found:
                raise
            return await self._create(now)
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        if holder and holder != self.identity:
            duration = int(spec.get("leaseDurationSeconds") or self.duration)
            if time.monotonic() - self._observed_at < duration:
                await self._set(False)
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
            await self._set(False)
            return False
        self._last_renewal = time.monotonic()
        await self._set(True)
        return True

    async def _create(self, now: datetime) -> bool:
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
            await self._set(False)
            return False
        self._last_renewal = time.monotonic()
        await self._set(True)
        return True

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

    async def _set(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        log.info("lease %s: %s %s leadership", self.name, self.identity,
                 "gained" if leader else "lost")  # fmt: skip
        self.changed.set()
        self.changed = asyncio.Event()
        if self.on_change is not None:
            await self.on_change(leader)
