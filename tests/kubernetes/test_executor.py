"""The Job executor against the fake API server, with the cluster simulator as the node."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from tests import factories
from tests.kubernetes.cluster import DIGEST, JOBS, PODS, Cluster, result_message, run_steps
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.support.processes import async_wait_for
from triggerd.executors.base import Cancelled, Executor, Failed, Outcome, Succeeded
from triggerd.executors.kubernetes import KubernetesExecutor
from triggerd.kube import Kube, KubernetesSettings
from triggerd.logs import LogStore
from triggerd.model import buildconfigs, requests
from triggerd.model.builds import Build, Phase, Reason, Stage
from triggerd.model.specs import SourceRevision
from triggerd.planning import archives, jobs

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.revisions: list[SourceRevision] = []
        self.stages: list[Stage] = []

    async def running(self) -> None:
        self.events.append("running")

    async def revision(self, revision: SourceRevision) -> None:
        self.events.append("revision")
        self.revisions.append(revision)

    async def stage(self, stage: Stage) -> None:
        self.events.append(f"stage:{stage.name.value}")
        self.stages.append(stage)


def make_build(number: int = 1) -> Build:
    return factories.build("app", number, Phase.PENDING, namespace="triggerd")


def test_implements_the_executor_protocol(executor: KubernetesExecutor) -> None:
    implementation: Executor = executor  # checked by mypy
    assert implementation is executor


async def start(
    executor: KubernetesExecutor, build: Build, cluster: Cluster
) -> tuple[asyncio.Task[Outcome], Recorder, str]:
    recorder = Recorder()
    task = asyncio.create_task(executor.run(build, recorder))
    job_name = jobs.name_job(build.namespace, build.name)
    await async_wait_for(lambda: cluster.pod_names(job_name), timeout=10, what="the build pod")
    return task, recorder, job_name


async def fetch_ok(cluster: Cluster, job_name: str) -> None:
    cluster.start_fetch(job_name, b"Cloning...\n")
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT, stages=("FetchInputs",)))


async def test_create_runs_to_complete_with_digest(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer, logs: LogStore
) -> None:
    build = make_build()
    task, recorder, job_name = await start(executor, build, cluster)
    await fetch_ok(cluster, job_name)
    await async_wait_for(lambda: recorder.revisions, timeout=10, what="revision reported")
    assert "running" not in recorder.events  # pod still Pending while the init runs
    cluster.start_build(job_name, b"STEP 1/2: FROM busybox\n")
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="Running")
    cluster.log(job_name, "build", b"STEP 2/2: RUN true\n")
    cluster.finish_build(
        job_name,
        message=result_message(digest=DIGEST, stages=("FetchInputs", "Build", "PushImage")),
    )
    outcome = await asyncio.wait_for(task, 15)
    assert outcome == Succeeded(digest=DIGEST, image_reference="127.0.0.1:5000/team/app:latest")
    assert recorder.revisions[0].commit == COMMIT
    assert [s.name.value for s in recorder.stages] == ["FetchInputs", "Build", "PushImage"]
    text = logs.read("triggerd", build.name).decode()
    assert "Cloning..." in text and "STEP 1/2" in text and "STEP 2/2" in text
    assert not logs.is_live("triggerd", build.name)
    assert apiserver.calls.creates[JOBS] == [job_name]


def _oom(cluster: Cluster, job: str) -> None:
    cluster.start_build(job)
    cluster.finish_build(job, exit_code=137, reason="OOMKilled")


def _evict(cluster: Cluster, job: str) -> None:
    cluster.start_build(job)
    cluster.evict(job)


def _drain(cluster: Cluster, job: str) -> None:
    cluster.start_build(job)
    cluster.drain(job)


def _docker_failed(cluster: Cluster, job: str) -> None:
    cluster.start_build(job, b"error: RUN false\n")
    cluster.finish_build(
        job,
        exit_code=1,
        message=result_message(
            succeeded=False, reason="DockerBuildFailed", message="buildah bud exited with 1"
        ),
    )


def _not_json(cluster: Cluster, job: str) -> None:
    # FallbackToLogsOnError: the message is the log tail when the runner wrote nothing
    cluster.start_build(job)
    cluster.finish_build(job, exit_code=2, message="Traceback...\nboom")


def _deleted(cluster: Cluster, job: str) -> None:
    cluster.start_build(job)
    cluster.delete_pod(job)


def _deadline(cluster: Cluster, job: str) -> None:
    cluster.start_build(job)
    cluster.exceed_deadline(job)


def _runner_deadline(cluster: Cluster, job: str) -> None:
    cluster.start_build(job)
    cluster.finish_build(
        job, exit_code=3, message=result_message(succeeded=False, stopped="DeadlineExceeded")
    )


@pytest.mark.parametrize(
    ("act", "reason"),
    [
        (_oom, Reason.OUT_OF_MEMORY_KILLED),
        (_evict, Reason.BUILD_POD_EVICTED),
        (_drain, Reason.BUILD_POD_EVICTED),
        (_docker_failed, Reason.DOCKER_BUILD_FAILED),
        (_not_json, Reason.GENERIC_BUILD_FAILED),
        (_deleted, Reason.BUILD_POD_DELETED),
        (_deadline, Reason.EXCEEDED_RETRY_TIMEOUT),
        (_runner_deadline, Reason.EXCEEDED_RETRY_TIMEOUT),
    ],
    ids=["oom", "evicted", "drained", "docker-failed", "not-json", "pod-deleted", "deadline",
         "runner-deadline"],
)  # fmt: skip
async def test_failures_map_to_openshift_reasons(
    executor: KubernetesExecutor,
    cluster: Cluster,
    act: Callable[[Cluster, str], None],
    reason: Reason,
) -> None:
    task, _, job_name = await start(executor, make_build(), cluster)
    await fetch_ok(cluster, job_name)
    act(cluster, job_name)
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Failed), outcome
    assert outcome.reason is reason
    if reason is Reason.EXCEEDED_RETRY_TIMEOUT:
        assert "completionDeadlineSeconds=" in outcome.message
    # Ended: its Job is gone, so no pod of it builds or pushes any more.
    assert cluster.job(job_name) is None
    assert len(cluster.pods_made) == 1


def job_reads(apiserver: FakeApiServer, job_name: str) -> int:
    return sum(1 for path in apiserver.calls.gets if path.endswith(f"/jobs/{job_name}"))


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        (Cluster.delete_pod_steps, Reason.BUILD_POD_DELETED),
        (Cluster.deadline_steps, Reason.EXCEEDED_RETRY_TIMEOUT),
        (Cluster.drain_steps, Reason.BUILD_POD_EVICTED),
        (Cluster.evict_steps, Reason.BUILD_POD_EVICTED),
    ],
    ids=["pod-deleted", "deadline", "drained", "evicted"],
)
async def test_each_intermediate_state_maps_the_same_way(
    executor: KubernetesExecutor,
    cluster: Cluster,
    apiserver: FakeApiServer,
    steps: Callable[[Cluster, str], list[Callable[[], None]]],
    reason: Reason,
) -> None:
    """As on a real cluster the build container shows 'terminated' (SIGTERM: the runner
    says it was stopped, exit 3) before the Job says why and the pod goes: the executor
    looks at every step before the next happens, and still reports the right reason."""
    task, _, job_name = await start(executor, make_build(), cluster)
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name, b"STEP 1/2\n")

    async def seen() -> None:
        names = cluster.pod_names(job_name)
        pod = apiserver.get(PODS, "triggerd", names[-1]) if names else None
        if pod is not None and jobs.read_pod(pod, image="", deadline_seconds=1).outcome:
            return  # the pod alone decides (an eviction): the Job is not asked
        reads = job_reads(apiserver, job_name)
        await async_wait_for(
            lambda: task.done() or job_reads(apiserver, job_name) > reads,
            timeout=10,
            what="the executor looked at the Job",
        )

    await run_steps(steps(cluster, job_name), seen)
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Failed), outcome
    assert outcome.reason is reason, outcome
    assert cluster.job(job_name) is None


async def test_a_dropped_connection_neither_ends_the_build_nor_loses_log_lines(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer, logs: LogStore
) -> None:
    """The API server connection drops while the pod watch and both log streams are open:
    the build goes on (the Job keeps running), the watch resumes, and the log has every
    line exactly once."""
    build = make_build()
    task, recorder, job_name = await start(executor, build, cluster)
    cluster.start_fetch(job_name, b"Cloning...\n")
    await async_wait_for(
        lambda: any(r[2] == "fetch" for r in apiserver.calls.log_requests), timeout=10,
        what="fetch log followed",
    )  # fmt: skip
    assert apiserver.drop_streams() >= 1
    cluster.log(job_name, "fetch", b"Fetched abc\n")
    cluster.finish_fetch(job_name, message=result_message(commit=COMMIT))
    cluster.start_build(job_name, b"STEP 1/2: FROM busybox\n")
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="Running")
    await async_wait_for(
        lambda: logs.read("triggerd", build.name).count(b"STEP 1/2") == 1, timeout=10,
        what="build log streaming",
    )  # fmt: skip
    assert apiserver.drop_streams() >= 2  # the pod watch and the build log
    cluster.log(job_name, "build", b"STEP 2/2: RUN true\n")
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    outcome = await asyncio.wait_for(task, 15)
    assert outcome == Succeeded(digest=DIGEST, image_reference="127.0.0.1:5000/team/app:latest")
    text = logs.read("triggerd", build.name).decode()
    for line in ("Cloning...", "Fetched abc", "STEP 1/2: FROM busybox", "STEP 2/2: RUN true"):
        assert text.count(line) == 1, text
    assert text.index("Cloning") < text.index("Fetched") < text.index("STEP 1/2")
    assert apiserver.calls.creates[JOBS] == [job_name]


async def test_a_log_stream_ended_early_is_resumed(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer, logs: LogStore
) -> None:
    """A follow stream the API server ends cleanly while the container still runs (its
    restart, a proxy's timeout) is not the end of the log."""
    build = make_build()
    task, _, job_name = await start(executor, build, cluster)
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name, b"one\n")
    await async_wait_for(
        lambda: b"one" in logs.read("triggerd", build.name), timeout=10, what="first line"
    )
    pod = cluster.pod_names(job_name)[-1]
    apiserver.end_log("triggerd", pod, "build")  # the stream ends; the container runs on
    await async_wait_for(
        lambda: sum(1 for r in apiserver.calls.log_requests if r[2] == "build") >= 2,
        timeout=10,
        what="the log followed again",
    )
    apiserver.log_done.discard(("triggerd", pod, "build"))
    cluster.log(job_name, "build", b"two\n")
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)
    assert logs.read("triggerd", build.name).decode().count("one\ntwo\n") == 1


async def test_a_watch_resumed_after_compaction_gets_410_and_relists(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    """The connection drops and, before the watch is resumed, the API server has compacted
    its history: the resume is answered 410 Gone, the pods are listed again, and the
    build is followed to its end."""
    task, recorder, job_name = await start(executor, make_build(), cluster)
    await fetch_ok(cluster, job_name)
    await async_wait_for(lambda: recorder.revisions, timeout=10, what="revision")
    gone = apiserver.calls.gone
    apiserver.compact()
    apiserver.drop_streams()  # before the open watch could be told by an ERROR event
    cluster.start_build(job_name)
    await async_wait_for(lambda: apiserver.calls.gone > gone, timeout=10, what="410")
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="Running")
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Succeeded) and outcome.digest == DIGEST


async def test_same_build_name_in_two_namespaces_runs_as_two_jobs(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    """team-a/app-1 and team-b/app-1 run side by side; neither's Job is taken for a stale
    Job of the other and deleted."""
    a = factories.build("app", 1, Phase.PENDING, namespace="team-a")
    b = factories.build("app", 1, Phase.PENDING, namespace="team-b")
    b = dataclasses.replace(b, meta=dataclasses.replace(b.meta, uid="uid-b"))
    task_a, _, job_a = await start(executor, a, cluster)
    task_b, _, job_b = await start(executor, b, cluster)
    assert job_a != job_b
    for job_name in (job_a, job_b):
        await fetch_ok(cluster, job_name)
        cluster.start_build(job_name)
    cluster.finish_build(job_a, message=result_message(digest=DIGEST))
    cluster.finish_build(job_b, message=result_message(digest="sha256:" + "cd" * 32))
    outcome_a, outcome_b = await asyncio.wait_for(asyncio.gather(task_a, task_b), 15)
    assert isinstance(outcome_a, Succeeded) and outcome_a.digest == DIGEST
    assert isinstance(outcome_b, Succeeded) and outcome_b.digest == "sha256:" + "cd" * 32
    assert sorted(apiserver.calls.creates[JOBS]) == sorted([job_a, job_b])
    assert not [d for d in apiserver.calls.deletes if d[0] == JOBS]


async def test_fetch_failure_is_fetch_source_failed(
    executor: KubernetesExecutor, cluster: Cluster, logs: LogStore
) -> None:
    build = make_build()
    task, recorder, job_name = await start(executor, build, cluster)
    cluster.start_fetch(job_name, b"fatal: repository not found\n")
    cluster.finish_fetch(
        job_name,
        exit_code=1,
        message=result_message(succeeded=False, reason="FetchSourceFailed", message="git fetch"),
    )
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.FETCH_SOURCE_FAILED
    assert "running" not in recorder.events
    assert "repository not found" in logs.read("triggerd", build.name).decode()


async def test_cancel_deletes_the_job(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    build = make_build()
    task, _, job_name = await start(executor, build, cluster)
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name)
    assert await executor.cancel(build.namespace, build.name)
    assert await asyncio.wait_for(task, 15) == Cancelled()
    assert cluster.job(job_name) is None
    # Background, said explicitly: the API's default for Jobs (Orphan) would leave the
    # build pod running
    assert (JOBS, job_name, "Background") in apiserver.calls.deletes
    await async_wait_for(lambda: not cluster.pod_names(job_name), timeout=5, what="pod gone")
    assert not await executor.cancel(build.namespace, build.name)


async def test_restart_adopts_the_job_without_a_second_one(
    kube: Kube,
    kube_settings: KubernetesSettings,
    cluster: Cluster,
    apiserver: FakeApiServer,
    logs: LogStore,
) -> None:
    build = make_build()
    first = KubernetesExecutor(kube, kube_settings, logs, recheck_seconds=1)
    task, _, job_name = await start(first, build, cluster)
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name, b"half way\n")
    task.cancel()  # the server process dies
    with pytest.raises(asyncio.CancelledError):
        await task

    second = KubernetesExecutor(kube, kube_settings, logs, recheck_seconds=1)
    running = dataclasses.replace(
        build, status=dataclasses.replace(build.status, phase=Phase.RUNNING)
    )
    assert await second.recover(running) is None
    recorder = Recorder()
    task = asyncio.create_task(second.run(running, recorder))
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="adopted")
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Succeeded) and outcome.digest == DIGEST
    assert apiserver.calls.creates[JOBS] == [job_name]
    assert apiserver.calls.create_conflicts[JOBS] == [job_name]  # the restart's attempt
    assert len(cluster.pods_made) == 1
    assert logs.read("triggerd", build.name).decode().count("half way") == 1


async def test_recover_without_job(executor: KubernetesExecutor) -> None:
    """Running without a Job: its pod is gone. Pending without a Job: the previous leader
    never made it, so it is run (made now). Cancelled: the cancel deleted it."""
    build = make_build()
    running = dataclasses.replace(
        build, status=dataclasses.replace(build.status, phase=Phase.RUNNING)
    )
    outcome = await executor.recover(running)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BUILD_POD_DELETED
    assert await executor.recover(build) is None
    cancelled = dataclasses.replace(
        running, status=dataclasses.replace(running.status, cancelled=True)
    )
    assert await executor.recover(cancelled) == Cancelled()


async def test_watch_expiry_relists_and_resumes(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    task, recorder, job_name = await start(executor, make_build(), cluster)
    await fetch_ok(cluster, job_name)
    await async_wait_for(lambda: recorder.revisions, timeout=10, what="revision")
    apiserver.compact()  # the open watch gets an ERROR 410 event
    cluster.start_build(job_name)
    await async_wait_for(lambda: apiserver.calls.gone >= 1, timeout=10, what="410 seen")
    # relisted, then resumed watching from the list's resourceVersion
    await async_wait_for(lambda: apiserver.calls.watches >= 2, timeout=10, what="new watch")
    await async_wait_for(lambda: "running" in recorder.events, timeout=10, what="Running")
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    outcome = await asyncio.wait_for(task, 15)
    assert isinstance(outcome, Succeeded) and outcome.digest == DIGEST
    assert "running" in recorder.events
    assert apiserver.calls.watches >= 2


async def test_unplannable_build_fails_without_a_job(
    executor: KubernetesExecutor, apiserver: FakeApiServer
) -> None:
    doc = factories.buildconfig_doc("bad", namespace="triggerd")
    doc["spec"]["strategy"]["dockerStrategy"] = {"env": [{"name": "A B", "value": "x"}]}
    from triggerd.model import buildconfigs, requests

    bc = buildconfigs.parse(doc)
    build = requests.instantiate(bc, requests.BuildRequest(), number=1, uid="u",
                                 created=factories.T0)  # fmt: skip
    outcome = await executor.run(build, Recorder())
    assert isinstance(outcome, Failed) and outcome.reason is Reason.DOCKER_BUILD_FAILED
    assert JOBS not in apiserver.calls.creates


async def test_stale_job_of_an_earlier_same_named_build_is_replaced(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    old = make_build()
    task, _, job_name = await start(executor, old, cluster)
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)
    assert cluster.job(job_name) is not None  # kept until its TTL

    # the config was deleted and created again: a new build with the same name
    new = dataclasses.replace(old, meta=dataclasses.replace(old.meta, uid="another-uid"))
    task, _, _ = await start(executor, new, cluster)
    await async_wait_for(
        lambda: len(apiserver.calls.creates[JOBS]) == 2, timeout=10, what="a new Job"
    )
    job = cluster.job(job_name)
    assert job is not None
    assert job["metadata"]["annotations"][jobs.BUILD_UID_ANNOTATION] == "another-uid"
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)


# Inputs and unsupported sources ---------------------------------------------------------------

INPUT_SPEC: dict[str, Any] = {
    "source": {
        "type": "Git",
        "git": {"uri": "https://git.example.com/team/app.git", "ref": "main"},
        "secrets": [{"secret": {"name": "npmrc"}, "destinationDir": "creds"}],
        "configMaps": [{"configMap": {"name": "settings"}}],
    },
    "strategy": {"type": "Docker", "dockerStrategy": {}},
}


def build_with(annotations: dict[str, str] | None = None, **spec: Any) -> Build:
    doc = factories.buildconfig_doc("inputs", namespace="triggerd")
    doc["spec"].update(spec)
    made = requests.instantiate(
        buildconfigs.parse(doc), requests.BuildRequest(annotations=annotations or {}),
        number=1, uid="uid-inputs-1", created=factories.T0,
    )  # fmt: skip
    return dataclasses.replace(made, status=dataclasses.replace(made.status, phase=Phase.PENDING))


def put_object(apiserver: FakeApiServer, plural: str, name: str) -> None:
    kind = "Secret" if plural == "secrets" else "ConfigMap"
    apiserver.put(
        ("v1", plural),
        {"apiVersion": "v1", "kind": kind,
         "metadata": {"name": name, "namespace": "triggerd"}, "data": {"k": "djE="}},
    )  # fmt: skip


async def test_a_missing_input_secret_fails_before_any_job(
    executor: KubernetesExecutor, apiserver: FakeApiServer, logs: LogStore
) -> None:
    put_object(apiserver, "configmaps", "settings")
    build = build_with(**INPUT_SPEC)
    outcome = await asyncio.wait_for(executor.run(build, Recorder()), 10)
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.FETCH_SOURCE_FAILED
    assert 'secret "npmrc"' in outcome.message and '"triggerd"' in outcome.message
    assert apiserver.calls.creates.get(JOBS, []) == []
    assert 'secret "npmrc"' in logs.read("triggerd", build.name).decode()


async def test_present_inputs_are_mounted_and_the_job_runs(
    executor: KubernetesExecutor, apiserver: FakeApiServer, cluster: Cluster
) -> None:
    put_object(apiserver, "configmaps", "settings")
    put_object(apiserver, "secrets", "npmrc")
    build = build_with(**INPUT_SPEC)
    task, _, job_name = await start(executor, build, cluster)
    job = cluster.job(job_name)
    assert job is not None
    volumes = {
        v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"] if "input" in v["name"]
    }
    assert {v.get("secret", v.get("configMap"))["defaultMode"] for v in volumes.values()} == {0o444}
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)


async def test_input_checks_skipped_when_rbac_forbids_them(
    executor: KubernetesExecutor, apiserver: FakeApiServer, cluster: Cluster
) -> None:
    """Without `get configmaps` the check cannot be made: the Job is created anyway."""
    put_object(apiserver, "secrets", "npmrc")
    apiserver.forbidden.add(("v1", "configmaps"))
    build = build_with(**INPUT_SPEC)
    task, _, job_name = await start(executor, build, cluster)
    assert apiserver.calls.creates[JOBS] == [job_name]
    await executor.cancel(build.namespace, build.name)
    assert isinstance(await asyncio.wait_for(task, 15), Cancelled)


async def test_a_missing_push_secret_is_named(
    executor: KubernetesExecutor, apiserver: FakeApiServer
) -> None:
    build = build_with(
        output={"to": {"kind": "DockerImage", "name": "127.0.0.1:5000/team/app:latest"},
                "pushSecret": {"name": "push-creds"}},
    )  # fmt: skip
    outcome = await asyncio.wait_for(executor.run(build, Recorder()), 10)
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.PUSH_IMAGE_TO_REGISTRY_FAILED
    assert 'secret "push-creds"' in outcome.message
    assert apiserver.calls.creates.get(JOBS, []) == []


async def test_binary_builds_are_refused_with_a_reason(
    executor: KubernetesExecutor, apiserver: FakeApiServer, logs: LogStore
) -> None:
    # An upload was made (instantiatebinary on this replica); a Job cannot take it along.
    build = build_with(
        annotations={archives.INPUT_ANNOTATION: "sha256:" + "0" * 64},
        source={"type": "Binary", "binary": {}},
    )
    outcome = await asyncio.wait_for(executor.run(build, Recorder()), 10)
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.FETCH_SOURCE_FAILED
    assert "binary builds" in outcome.message and "executor kubernetes" in outcome.message
    assert apiserver.calls.creates.get(JOBS, []) == []
    assert "not shipped into build pods" in logs.read("triggerd", build.name).decode()


async def test_recover_does_not_take_an_earlier_builds_job_for_its_own(
    executor: KubernetesExecutor, cluster: Cluster
) -> None:
    """A Job of the same name left by an earlier build (its config deleted and made again)
    is not this Running build's: its pod is gone."""
    old = make_build()
    task, _, job_name = await start(executor, old, cluster)
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)
    new = dataclasses.replace(
        old,
        meta=dataclasses.replace(old.meta, uid="another-uid"),
        status=dataclasses.replace(old.status, phase=Phase.RUNNING),
    )
    outcome = await executor.recover(new)
    assert isinstance(outcome, Failed) and outcome.reason is Reason.BUILD_POD_DELETED
    assert await executor.recover(dataclasses.replace(old, status=new.status)) is None


async def test_a_run_that_fails_deletes_its_job(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    """The pods cannot be read any more (RBAC changed under it): the engine ends the build
    as Error, and the Job goes with it instead of building on unwatched."""
    task, _, job_name = await start(executor, make_build(), cluster)
    await fetch_ok(cluster, job_name)
    apiserver.forbidden.add(PODS)
    apiserver.drop_streams()
    with pytest.raises(Exception, match="403"):
        await asyncio.wait_for(task, 15)
    assert cluster.job(job_name) is None


async def test_transient_api_errors_before_the_job_exists_are_retried(
    executor: KubernetesExecutor, cluster: Cluster, apiserver: FakeApiServer
) -> None:
    """The API answers 500 to the first Job read and the first create: the build is not
    failed with CannotCreateBuildPod for it; one Job is made."""
    apiserver.fail_reads[JOBS] = 1
    apiserver.fail_next[JOBS] = 1
    task, _, job_name = await start(executor, make_build(), cluster)
    await fetch_ok(cluster, job_name)
    cluster.start_build(job_name)
    cluster.finish_build(job_name, message=result_message(digest=DIGEST))
    assert isinstance(await asyncio.wait_for(task, 15), Succeeded)
    assert apiserver.calls.creates[JOBS] == [job_name]


class _EndsBeforeTheJobCheck(KubernetesExecutor):
    """Runs ``end`` once, between the executor's first list of the pods and its first
    look at the Job: the build ends before the pod watch ever sees its containers."""

    end: Callable[[], None] | None = None

    async def _check_job(self, *args: Any, **kwargs: Any) -> Outcome | None:
        end, self.end = self.end, None
        if end is not None:
            end()
        return await super()._check_job(*args, **kwargs)


async def test_a_build_that_ends_before_its_pod_is_watched_keeps_log_revision_and_stages(
    kube: Kube, kube_settings: KubernetesSettings, cluster: Cluster, logs: LogStore
) -> None:
    executor = _EndsBeforeTheJobCheck(kube, kube_settings, logs, recheck_seconds=1)
    build = make_build()
    job_name = jobs.name_job(build.namespace, build.name)

    def end() -> None:
        cluster.start_fetch(job_name, b"Cloning...\n")
        cluster.finish_fetch(
            job_name, message=result_message(commit=COMMIT, stages=("FetchInputs",))
        )
        cluster.start_build(job_name, b"STEP 1/1: FROM busybox\n")
        cluster.finish_build(
            job_name, message=result_message(digest=DIGEST, stages=("Build", "PushImage"))
        )

    executor.end = end
    recorder = Recorder()
    outcome = await asyncio.wait_for(executor.run(build, recorder), 15)
    assert executor.end is None  # it did end in between
    assert isinstance(outcome, Succeeded) and outcome.digest == DIGEST
    text = logs.read("triggerd", build.name).decode()
    assert "Cloning...\n" in text and "STEP 1/1: FROM busybox\n" in text
    assert [r.commit for r in recorder.revisions] == [COMMIT]
    assert [s.name.value for s in recorder.stages] == ["FetchInputs", "Build", "PushImage"]
