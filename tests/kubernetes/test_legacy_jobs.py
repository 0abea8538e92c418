"""Jobs made by the triggerd version before Job names carried the namespace, found again
after a rolling upgrade.

That version named a build's Job ``<build>-build`` and labelled it (and its pods) with the
Job name and the build name only; the build's namespace, name and uid were annotations.
:func:`legacy_job` turns today's manifest into that shape, and creates it through the fake
API server, so the cluster simulator makes its pod as the Job controller would.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from typing import Any

from tests import factories
from tests.kubernetes.cluster import DIGEST, JOBS, Cluster, result_message
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_executor import Recorder, fetch_ok
from tests.support.processes import async_wait_for
from triggerd.executors.base import Cancelled, Failed, Outcome, Succeeded
from triggerd.executors.kubernetes import KubernetesExecutor, PodLogs, job_options
from triggerd.kube import Kube, KubernetesSettings, path_for
from triggerd.logs import LogStore
from triggerd.model.builds import Build, Phase, Reason
from triggerd.planning import buildah, jobs


def running_build(*, uid: str = "", namespace: str = NAMESPACE) -> Build:
    made = factories.build("app", 1, Phase.RUNNING, namespace=namespace)
    if uid:
        made = dataclasses.replace(made, meta=dataclasses.replace(made.meta, uid=uid))
    return made


def legacy_manifest(build: Build, settings: KubernetesSettings) -> dict[str, Any]:
    """The Job of ``build`` as the earlier version wrote it: its name, and no namespace or
    uid label on the Job or its pod template (the annotations were the same)."""
    options = job_options(settings, build, owner_builds=False)
    plan = buildah.render(build, jobs.plan_context(build, options))
    manifest = copy.deepcopy(jobs.render_job(build, plan, options))
    name = jobs.legacy_name_job(build.namespace, build.name)
    manifest["metadata"]["name"] = name
    for labels in (
        manifest["metadata"]["labels"],
        manifest["spec"]["template"]["metadata"]["labels"],
    ):
        labels.pop(jobs.BUILD_NAMESPACE_LABEL, None)
        labels.pop(jobs.BUILD_UID_LABEL, None)
        labels[jobs.JOB_LABEL] = name
    return manifest


async def legacy_job(kube: Kube, settings: KubernetesSettings, build: Build) -> str:
    manifest = legacy_manifest(build, settings)
    await kube.create(path_for("batch/v1", "jobs", settings.namespace), manifest)
    return str(manifest["metadata"]["name"])


async def adopt(
    executor: KubernetesExecutor, build: Build
) -> tuple[asyncio.Task[Outcome], Recorder]:
    assert await executor.recover(build) is None
    recorder = Recorder()
    return asyncio.create_task(executor.run(build, recorder)), recorder


def test_legacy_names_are_the_earlier_versions() -> None:
    assert jobs.legacy_name_job("team-a", "app-1") == "app-1-build"
    assert jobs.legacy_name_job("team-b", "app-1") == "app-1-build"  # why the uid is checked
    long = jobs.legacy_name_job("ns", "a" * 70)
    assert len(long) <= 63 and long.endswith("-build") and long.startswith("a" * 46)
    assert jobs.legacy_name_job("ns", "App.1") != jobs.legacy_name_job("other", "App.1")
    assert jobs.legacy_pod_selector("ns", "app-1") == (
        "triggerd.dev/job=app-1-build,openshift.io/build.name=app-1"
    )


def test_belongs_to_checks_namespace_name_and_uid() -> None:
    job = {
        "metadata": {
            "annotations": {
                jobs.BUILD_NAMESPACE_ANNOTATION: "ns",
                jobs.BUILD_ANNOTATION: "app-1",
                jobs.BUILD_UID_ANNOTATION: "u1",
            }
        }
    }
    assert jobs.belongs_to(job, "ns", "app-1", "u1")
    assert jobs.belongs_to(job, "ns", "app-1")
    assert not jobs.belongs_to(job, "ns", "app-1", "u2")
    assert not jobs.belongs_to(job, "other", "app-1", "u1")
    assert not jobs.belongs_to(job, "ns", "app-2", "u1")
    assert not jobs.belongs_to({"metadata": {}}, "ns", "app-1")


async def test_a_running_builds_earlier_version_job_is_adopted_and_completes_it(
    executor: KubernetesExecutor,
    kube: Kube,
    kube_settings: KubernetesSettings,
    cluster: Cluster,
    apiserver: FakeApiServer,
    logs: LogStore,
) -> None:
    build = running_build()
    name = await legacy_job(kube, kube_settings, build)
    await fetch_ok(cluster, name)
    cluster.start_build(name, b"half way\n")

    task, recorder = await adopt(executor, build)
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="adopted")
    await async_wait_for(
        lambda: b"half way" in logs.read(NAMESPACE, build.name), timeout=10, what="its log"
    )
    cluster.log(name, "build", b"the rest\n")
    cluster.finish_build(name, message=result_message(digest=DIGEST))
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Succeeded) and outcome.digest == DIGEST
    assert apiserver.calls.creates[JOBS] == [name]  # no Job of today's name was made
    assert len(cluster.pods_made) == 1
    text = logs.read(NAMESPACE, build.name).decode()
    assert text.count("half way") == 1 and "the rest" in text


async def test_cancel_deletes_the_earlier_version_job(
    executor: KubernetesExecutor,
    kube: Kube,
    kube_settings: KubernetesSettings,
    cluster: Cluster,
    apiserver: FakeApiServer,
) -> None:
    build = running_build()
    name = await legacy_job(kube, kube_settings, build)
    await fetch_ok(cluster, name)
    cluster.start_build(name)
    task, recorder = await adopt(executor, build)
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="adopted")
    assert await executor.cancel(build.namespace, build.name)
    assert await asyncio.wait_for(task, 15) == Cancelled()
    assert cluster.job(name) is None
    assert (JOBS, name, "Background") in apiserver.calls.deletes
    await async_wait_for(lambda: not cluster.pod_names(name), timeout=5, what="pod gone")


async def test_a_cancel_on_a_replica_not_following_it_deletes_it(
    executor: KubernetesExecutor, kube: Kube, kube_settings: KubernetesSettings, cluster: Cluster
) -> None:
    build = running_build()
    name = await legacy_job(kube, kube_settings, build)
    assert await executor.cancel(build.namespace, build.name)
    assert cluster.job(name) is None


async def test_an_earlier_version_job_that_fails_is_deleted(
    executor: KubernetesExecutor, kube: Kube, kube_settings: KubernetesSettings, cluster: Cluster
) -> None:
    build = running_build()
    name = await legacy_job(kube, kube_settings, build)
    await fetch_ok(cluster, name)
    cluster.start_build(name)
    task, recorder = await adopt(executor, build)
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="adopted")
    cluster.evict(name)
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BUILD_POD_EVICTED
    assert cluster.job(name) is None


async def test_a_pending_builds_earlier_version_job_is_adopted_not_doubled(
    executor: KubernetesExecutor,
    kube: Kube,
    kube_settings: KubernetesSettings,
    cluster: Cluster,
    apiserver: FakeApiServer,
) -> None:
    """The earlier leader made the Job but stopped before the build was Running."""
    build = dataclasses.replace(
        running_build(), status=dataclasses.replace(running_build().status, phase=Phase.PENDING)
    )
    name = await legacy_job(kube, kube_settings, build)
    task, recorder = await adopt(executor, build)
    await fetch_ok(cluster, name)
    cluster.start_build(name)
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="Running")
    cluster.finish_build(name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)
    assert apiserver.calls.creates[JOBS] == [name]


async def test_another_builds_job_of_the_earlier_name_is_not_adopted(
    executor: KubernetesExecutor,
    kube: Kube,
    kube_settings: KubernetesSettings,
    cluster: Cluster,
    apiserver: FakeApiServer,
) -> None:
    """Same name, another uid (an earlier build of that name, or the same name in another
    namespace): not this build's, and left alone."""
    earlier = running_build(uid="uid-of-an-earlier-build")
    name = await legacy_job(kube, kube_settings, earlier)
    other_namespace = running_build(namespace="team-b")
    assert jobs.legacy_name_job(other_namespace.namespace, other_namespace.name) == name

    build = running_build()
    outcome = await executor.recover(build)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BUILD_POD_DELETED
    outcome = await executor.recover(other_namespace)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BUILD_POD_DELETED

    # Pending: it gets a Job of today's name; the other Job stays as it was.
    pending = dataclasses.replace(
        build, status=dataclasses.replace(build.status, phase=Phase.PENDING)
    )
    assert await executor.recover(pending) is None
    recorder = Recorder()
    task = asyncio.create_task(executor.run(pending, recorder))
    new_name = jobs.name_job(build.namespace, build.name)
    await async_wait_for(lambda: cluster.pod_names(new_name), timeout=10, what="a new Job")
    assert apiserver.calls.creates[JOBS] == [name, new_name]
    await fetch_ok(cluster, new_name)
    cluster.start_build(new_name)
    cluster.finish_build(new_name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)

    # A cancel of a build of another namespace does not touch it either.
    await executor.cancel("team-b", build.name)
    kept = cluster.job(name)
    assert kept is not None
    assert kept["metadata"]["annotations"][jobs.BUILD_UID_ANNOTATION] == earlier.meta.uid


async def test_another_replica_reads_the_log_of_an_earlier_version_pod(
    kube: Kube, kube_settings: KubernetesSettings, cluster: Cluster
) -> None:
    build = running_build()
    name = await legacy_job(kube, kube_settings, build)
    cluster.start_fetch(name, b"Cloning...\n")
    pod_logs = PodLogs(kube, kube_settings, watch_seconds=1)
    assert await pod_logs.read(build.namespace, build.name) == b"Cloning...\n"
    assert await pod_logs.read("team-b", build.name) is None  # same labels, not its pod
