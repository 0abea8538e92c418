"""Leader election on a Lease, and two replicas handing over a running build."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import factories
from tests.kubernetes.cluster import DIGEST, JOBS, Cluster, result_message
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_executor import COMMIT, Recorder
from tests.kubernetes.test_store import new_build
from tests.support.processes import async_wait_for
from triggerd.executors.base import Succeeded
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.kube import Kube, KubernetesSettings, connect
from triggerd.leader import LeaderElector
from triggerd.logs import LogStore
from triggerd.model.builds import Phase
from triggerd.planning import jobs
from triggerd.store.base import BuildQuery
from triggerd.store.kubernetes import KubernetesStore

LEASES = ("coordination.k8s.io/v1", "leases")


class Replica:
    """One triggerd process as far as Kubernetes mode goes: client, store, elector."""

    def __init__(self, kube: Kube, name: str, settings: KubernetesSettings, logs: Path) -> None:
        self.kube = kube
        self.changes: list[bool] = []
        self.store = KubernetesStore(kube, NAMESPACE)
        self.executor = KubernetesExecutor(
            kube, settings, LogStore(logs / name), owner_builds=True, recheck_seconds=1
        )
        self.elector = LeaderElector(
            kube,
            namespace=NAMESPACE,
            name="triggerd-leader",
            identity=name,
            lease_duration_seconds=settings.lease_duration_seconds,
            renew_interval_seconds=settings.renew_interval_seconds,
            on_change=self._changed,
        )

    async def _changed(self, leader: bool) -> None:
        self.changes.append(leader)


@pytest.fixture
async def replicas(
    kube_settings: KubernetesSettings, tmp_path: Path
) -> AsyncIterator[tuple[Replica, Replica]]:
    clients = [Kube(await connect(kube_settings)) for _ in range(2)]
    pair = (
        Replica(clients[0], "replica-a", kube_settings, tmp_path),
        Replica(clients[1], "replica-b", kube_settings, tmp_path),
    )
    try:
        yield pair
    finally:
        for replica in pair:
            await replica.elector.stop()
        for client in clients:
            await client.close()


async def test_one_leader_and_clean_hand_over(
    replicas: tuple[Replica, Replica], apiserver: FakeApiServer
) -> None:
    a, b = replicas
    a.elector.start()
    await async_wait_for(lambda: a.elector.is_leader, timeout=5, what="a leads")
    b.elector.start()
    await asyncio.sleep(0)  # let b campaign at least once
    await async_wait_for(lambda: b.elector._observed is not None, timeout=5, what="b looked")
    assert not b.elector.is_leader
    await a.elector.stop()  # releases the Lease
    assert a.changes == [True, False]
    lease = apiserver.get(LEASES, NAMESPACE, "triggerd-leader")
    assert lease is not None and lease["spec"]["holderIdentity"] in ("", "replica-b")
    # b takes over on its next round, well before the 2 s lease would have expired
    await async_wait_for(lambda: b.elector.is_leader, timeout=1.5, what="b leads")
    lease = apiserver.get(LEASES, NAMESPACE, "triggerd-leader")
    assert lease is not None and lease["spec"]["leaseTransitions"] >= 1


async def test_leader_loses_on_conflict(
    replicas: tuple[Replica, Replica], apiserver: FakeApiServer
) -> None:
    a, _ = replicas
    assert await a.elector.try_once()
    await async_wait_for(lambda: a.changes == [True], timeout=5, what="told it leads")
    lease = apiserver.get(LEASES, NAMESPACE, "triggerd-leader")
    assert lease is not None
    # Another writer moves the Lease on between a's read and write
    original_get = a.kube.get

    async def get_then_steal(path: str, **options: Any) -> dict[str, Any]:
        doc = await original_get(path, **options)
        stolen = apiserver.get(LEASES, NAMESPACE, "triggerd-leader")
        assert stolen is not None
        stolen["spec"]["holderIdentity"] = "intruder"
        apiserver.put(LEASES, stolen)
        return doc

    a.kube.get = get_then_steal  # type: ignore[method-assign]
    try:
        assert not await a.elector.try_once()
    finally:
        a.kube.get = original_get  # type: ignore[method-assign]
    assert not a.elector.is_leader
    await async_wait_for(lambda: a.changes == [True, False], timeout=5, what="told it lost")
    assert not await a.elector.try_once()  # the intruder's fresh lease is respected


async def test_crashed_leader_is_replaced_after_expiry(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    assert await a.elector.try_once()
    assert not await b.elector.try_once()
    # a dies without releasing: b must wait out the lease duration (2 s) from its own view
    await async_wait_for(b.elector.try_once, timeout=5, what="b takes the expired lease")
    assert not await a.elector.try_once()  # the old leader comes back: it follows


async def test_hand_over_mid_build_adopts_the_job(
    replicas: tuple[Replica, Replica], apiserver: FakeApiServer, cluster: Cluster
) -> None:
    a, b = replicas
    await a.store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    # the webhook lands on b, which is not the leader: it only records the Build
    assert await a.elector.try_once() and not await b.elector.try_once()
    build = (await b.store.instantiate([new_build()])).builds[0]

    # the leader (a) sees it and runs it
    pending = (await a.store.list_builds(BuildQuery(phases=frozenset({Phase.NEW})))).builds
    assert [x.name for x in pending] == [build.name]
    task = asyncio.create_task(a.executor.run(build, Recorder()))
    job_name = jobs.name_job(build.namespace, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=5, what="pod")
    job = cluster.job(job_name)
    assert job is not None and job["metadata"]["ownerReferences"][0]["uid"] == build.meta.uid
    cluster.start_fetch(job_name)
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
    cluster.start_build(job_name)

    # a crashes; b takes over once the lease expires, recovers and adopts the Job
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await async_wait_for(b.elector.try_once, timeout=5, what="b leads")
    running = dataclasses.replace(
        build, status=dataclasses.replace(build.status, phase=Phase.RUNNING)
    )
    assert await b.executor.recover(running) is None
    task = asyncio.create_task(b.executor.run(running, Recorder()))
    await async_wait_for(
        lambda: apiserver.calls.create_conflicts.get(JOBS), timeout=5, what="adoption"
    )
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    outcome = await asyncio.wait_for(task, 10)
    assert isinstance(outcome, Succeeded) and outcome.digest == DIGEST
    assert apiserver.calls.creates[JOBS] == [job_name]
    assert len(cluster.pods_made) == 1
    assert len(apiserver.list(("triggerd.dev/v1", "builds"), NAMESPACE)) == 1


# Robustness: slow or failing leadership work, hanging API calls, shutdown order ----------------


def lease_holder(apiserver: FakeApiServer) -> str:
    lease = apiserver.get(LEASES, NAMESPACE, "triggerd-leader")
    return "" if lease is None else str(lease["spec"].get("holderIdentity") or "")


def renewals(apiserver: FakeApiServer, identity: str) -> int:
    """How many times ``identity`` wrote the Lease (creates and renewals)."""
    return sum(
        1
        for event in apiserver.history
        if event.key == LEASES and event.obj["spec"].get("holderIdentity") == identity
    )


async def test_slow_leadership_work_does_not_delay_renewals(
    replicas: tuple[Replica, Replica], apiserver: FakeApiServer
) -> None:
    """Recovery that takes longer than the lease (2 s here) must not let the Lease
    expire: renewals go on meanwhile, and the other replica never leads."""
    a, b = replicas
    release = asyncio.Event()
    started: list[bool] = []

    async def slow(leader: bool) -> None:
        started.append(leader)
        if leader:
            await release.wait()  # recover() on a big cluster
        a.changes.append(leader)

    a.elector.on_change = slow
    a.elector.start()
    await async_wait_for(lambda: started == [True], timeout=5, what="a starts leading")
    b.elector.start()
    before = renewals(apiserver, "replica-a")
    # more than a whole lease duration of renewals while recovery still runs
    wanted = before + int(a.elector.duration / a.elector.renew_interval) + 2
    await async_wait_for(
        lambda: renewals(apiserver, "replica-a") >= wanted, timeout=10, what="renewals go on"
    )
    assert a.elector.is_leader and not b.elector.is_leader
    assert not b.changes and lease_holder(apiserver) == "replica-a"
    release.set()
    await async_wait_for(lambda: a.changes == [True], timeout=5, what="leading")


async def test_failed_start_of_leadership_is_retried(
    replicas: tuple[Replica, Replica],
) -> None:
    """on_change(True) raising (the store unreachable during recovery) must not leave a
    replica holding the Lease with nothing scheduling: it is undone and tried again."""
    a, _ = replicas
    calls: list[bool] = []

    async def flaky(leader: bool) -> None:
        calls.append(leader)
        if leader and calls.count(True) < 3:
            raise RuntimeError("store unreachable")

    a.elector.on_change = flaky
    a.elector.start()
    await async_wait_for(lambda: calls.count(True) == 3, timeout=10, what="third start")
    # each failed start was undone before the next attempt
    assert calls == [True, False, True, False, True]
    assert a.elector.is_leader
    await a.elector.stop()
    assert calls[-1] is False


async def test_losing_the_lease_cancels_a_start_in_progress(
    replicas: tuple[Replica, Replica], apiserver: FakeApiServer
) -> None:
    a, _ = replicas
    entered = asyncio.Event()
    cancelled: list[bool] = []
    calls: list[bool] = []

    async def stuck(leader: bool) -> None:
        calls.append(leader)
        if leader:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

    a.elector.on_change = stuck
    assert await a.elector.try_once()
    await asyncio.wait_for(entered.wait(), 5)
    lease = apiserver.get(LEASES, NAMESPACE, "triggerd-leader")
    assert lease is not None
    lease["spec"]["holderIdentity"] = "intruder"  # someone else took it
    lease["spec"]["renewTime"] = "2099-01-01T00:00:00.000000Z"
    apiserver.put(LEASES, lease)
    assert not await a.elector.try_once()
    await async_wait_for(lambda: calls == [True, False], timeout=5, what="stopped leading")
    assert cancelled == [True]


async def test_a_leader_whose_api_calls_hang_steps_down_before_the_lease_expires(
    replicas: tuple[Replica, Replica],
) -> None:
    """The API server stops answering a (not b): a must stop leading before b may take
    over, so there is never a moment with two leaders."""
    a, b = replicas
    events: list[tuple[str, bool]] = []

    async def record_a(leader: bool) -> None:
        events.append(("a", leader))

    async def record_b(leader: bool) -> None:
        events.append(("b", leader))

    a.elector.on_change, b.elector.on_change = record_a, record_b
    a.elector.start()
    await async_wait_for(lambda: events == [("a", True)], timeout=5, what="a leads")
    b.elector.start()

    async def hang(*args: Any, **kwargs: Any) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    a.kube.get = hang  # type: ignore[method-assign]
    await async_wait_for(lambda: ("b", True) in events, timeout=10, what="b takes over")
    assert events.index(("a", False)) < events.index(("b", True)), events


async def test_dropped_connections_do_not_end_the_campaign(
    replicas: tuple[Replica, Replica], apiserver: FakeApiServer
) -> None:
    """aiohttp's own errors (a server that closes the connection) are API errors like
    any other: the elector goes on and leads once the API server answers again."""
    a, _ = replicas
    apiserver.abort_next[LEASES] = 3
    a.elector.start()
    await async_wait_for(lambda: a.elector.is_leader, timeout=10, what="a leads after all")
    assert apiserver.abort_next[LEASES] == 0
    assert a.elector._task is not None and not a.elector._task.done()


async def test_stop_stops_leading_before_releasing_the_lease(
    replicas: tuple[Replica, Replica], apiserver: FakeApiServer
) -> None:
    """SIGTERM: the engine stops scheduling while this replica still holds the Lease;
    only then may a successor take it."""
    a, _ = replicas
    holder_when_stopping: list[str] = []

    async def record(leader: bool) -> None:
        if not leader:
            holder_when_stopping.append(lease_holder(apiserver))

    a.elector.on_change = record
    a.elector.start()
    await async_wait_for(lambda: a.elector.is_leader, timeout=5, what="a leads")
    await async_wait_for(lambda: a.elector.settled.is_set(), timeout=5, what="a settled")
    await a.elector.stop()
    assert holder_when_stopping == ["replica-a"]
    assert lease_holder(apiserver) == ""


def test_the_renew_deadline_lies_between_the_interval_and_the_lease(kube: Kube) -> None:
    def deadline(duration: int, interval: float) -> float:
        elector = LeaderElector(
            kube, namespace=NAMESPACE, name="l", identity="i",
            lease_duration_seconds=duration, renew_interval_seconds=interval,
        )  # fmt: skip
        return elector.renew_deadline

    assert deadline(15, 5.0) == 10.0  # client-go's defaults
    assert 12.0 < deadline(15, 12.0) < 15.0
    with pytest.raises(ValueError, match="renew deadline"):
        LeaderElector(kube, namespace=NAMESPACE, name="l", identity="i",
                      lease_duration_seconds=15, renew_deadline_seconds=20)  # fmt: skip
