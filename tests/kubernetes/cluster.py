"""Plays the Job controller and the kubelet against :class:`FakeApiServer`'s store.

When a Job is created, a pod is made from its template (owned by the Job, so deleting the
Job removes it); tests then move it through the states a real node would produce:
containers waiting/running/terminated with exit codes, reasons and termination messages,
log output, evictions, OOM kills, and the Job conditions the controller sets.

Endings that come from outside the pod happen in steps, each its own store event, in the
order a real cluster shows them: a deleted or drained pod first gets ``deletionTimestamp``
(and on a drain the ``DisruptionTarget`` condition), then its build container terminates
(the runner caught SIGTERM: ``stopped: Cancelled``, exit 3), then the Job controller writes
its condition, then the pod is gone. The ``*_steps`` methods return those steps so a test
can let the executor see each one before the next (``run_steps``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any

from tests.kubernetes.fake_apiserver import FakeApiServer, Key, Obj, _now

JOBS: Key = ("batch/v1", "jobs")
PODS: Key = ("v1", "pods")
DIGEST = "sha256:" + "ab" * 32


def result_message(
    *,
    succeeded: bool = True,
    digest: str = "",
    commit: str = "",
    reason: str = "",
    message: str = "",
    stopped: str = "",
    stages: tuple[str, ...] = (),
) -> str:
    """A termination message as ``python -m triggerd.runner --result`` writes it."""
    outputs: dict[str, str] = {}
    if digest:
        outputs["image.digest"] = digest
    if commit:
        outputs.update(
            {
                "revision.commit": commit,
                "revision.author.name": "Ada",
                "revision.author.email": "ada@example.com",
                "revision.message": "Add a thing",
            }
        )
    doc: dict[str, Any] = {
        "succeeded": succeeded,
        "outputs": outputs,
        "stages": [
            {"name": s, "startTime": "2026-01-01T00:00:00Z", "durationMilliseconds": 5}
            for s in stages
        ],
        "logSnippet": "last line" if not succeeded else "",
    }
    if reason:
        doc["reason"], doc["message"] = reason, message
    if stopped:
        doc["stopped"] = stopped
    return json.dumps(doc)


class Cluster:
    def __init__(self, server: FakeApiServer, namespace: str = "triggerd") -> None:
        self.server = server
        self.namespace = namespace
        self.pods_made: list[str] = []
        server.on_create.append(self._created)

    # Job controller -----------------------------------------------------------------------
    def _created(self, key: Key, obj: Obj) -> None:
        if key == JOBS:
            self.make_pod(obj["metadata"]["name"])

    def job(self, job_name: str) -> Obj | None:
        return self.server.get(JOBS, self.namespace, job_name)

    def make_pod(self, job_name: str) -> str:
        job = self.job(job_name)
        assert job is not None, job_name
        template = job["spec"]["template"]
        name = f"{job_name}-{len(self.pods_made):05d}"
        labels = dict(template["metadata"].get("labels") or {})
        labels["job-name"] = job_name
        pod = {
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": copy.deepcopy(template["metadata"].get("annotations") or {}),
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                     "uid": job["metadata"]["uid"], "controller": True}
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        }  # fmt: skip
        self.server.put(PODS, pod)
        self.pods_made.append(name)
        return name

    def pod_names(self, job_name: str) -> list[str]:
        return [
            p["metadata"]["name"]
            for p in self.server.list(PODS, self.namespace, f"triggerd.dev/job={job_name}")
        ]

    def pod(self, job_name: str) -> Obj:
        names = self.pod_names(job_name)
        assert names, f"no pod for {job_name}"
        pod = self.server.get(PODS, self.namespace, names[-1])
        assert pod is not None
        return pod

    def set_job_condition(self, job_name: str, type_: str, reason: str, message: str = "") -> None:
        job = self.job(job_name)
        if job is None:
            return  # deleted meanwhile (the executor ends failed builds' Jobs)
        conditions = [
            c
            for c in (job.setdefault("status", {}).get("conditions") or [])
            if c.get("type") == "FailureTarget" and type_ == "Failed"
        ]
        conditions.append(
            {"type": type_, "status": "True", "reason": reason, "message": message,
             "lastTransitionTime": _now()}
        )  # fmt: skip
        job["status"]["conditions"] = conditions
        self.server.put(JOBS, job)

    # Kubelet ------------------------------------------------------------------------------
    def _update_pod(self, job_name: str, change: Any) -> str:
        pod = self.pod(job_name)
        change(pod["status"])
        self.server.put(PODS, pod)
        return str(pod["metadata"]["name"])

    def _mark_deleting(self, job_name: str) -> None:
        pod = self.pod(job_name)
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = 30
        self.server.put(PODS, pod)

    def _remove_pod(self, job_name: str) -> None:
        names = self.pod_names(job_name)
        if names:
            self.server.remove(PODS, self.namespace, names[-1])

    def _sigterm(self, job_name: str) -> None:
        """The build container (or the init container, if still fetching) got SIGTERM: the
        runner stopped and said so, exit 3."""
        stopped = result_message(succeeded=False, stopped="Cancelled")

        def change(status: dict[str, Any]) -> None:
            status["phase"] = "Failed"
            if status.get("containerStatuses"):
                status["containerStatuses"] = [_terminated("build", 3, stopped)]
            else:
                status["initContainerStatuses"] = [_terminated("fetch", 3, stopped)]

        name = self._update_pod(job_name, change)
        for container in ("fetch", "build"):
            self.server.end_log(self.namespace, name, container)

    def start_fetch(self, job_name: str, log: bytes = b"") -> None:
        def change(status: dict[str, Any]) -> None:
            status["initContainerStatuses"] = [_running("fetch")]

        name = self._update_pod(job_name, change)
        self.server.append_log(self.namespace, name, "fetch", log)

    def finish_fetch(self, job_name: str, *, exit_code: int = 0, message: str = "") -> None:
        def change(status: dict[str, Any]) -> None:
            status["initContainerStatuses"] = [_terminated("fetch", exit_code, message)]
            if exit_code:
                status["phase"] = "Failed"

        name = self._update_pod(job_name, change)
        self.server.end_log(self.namespace, name, "fetch")
        if exit_code:
            self.set_job_condition(job_name, "Failed", "BackoffLimitExceeded")

    def start_build(self, job_name: str, log: bytes = b"") -> None:
        def change(status: dict[str, Any]) -> None:
            status["phase"] = "Running"
            status["containerStatuses"] = [_running("build")]

        name = self._update_pod(job_name, change)
        self.server.append_log(self.namespace, name, "build", log)

    def log(self, job_name: str, container: str, data: bytes) -> None:
        self.server.append_log(self.namespace, self.pod_names(job_name)[-1], container, data)

    def finish_build(
        self, job_name: str, *, exit_code: int = 0, message: str = "", reason: str = ""
    ) -> None:
        def change(status: dict[str, Any]) -> None:
            status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            status["containerStatuses"] = [
                _terminated("build", exit_code, message, reason or ("Completed" if exit_code == 0
                                                                    else "Error"))
            ]  # fmt: skip

        name = self._update_pod(job_name, change)
        self.server.end_log(self.namespace, name, "build")
        if exit_code == 0:
            self.set_job_condition(job_name, "Complete", "")
        else:
            self.set_job_condition(job_name, "Failed", "BackoffLimitExceeded")

    def evict_steps(self, job_name: str) -> list[Callable[[], None]]:
        """The kubelet evicts the pod (node pressure): DisruptionTarget and phase Failed,
        reason Evicted, the containers killed; the Job fails by its pod failure policy."""
        message = "The node was low on resource: ephemeral-storage."

        def evict() -> None:
            def change(status: dict[str, Any]) -> None:
                status["phase"] = "Failed"
                status["reason"] = "Evicted"
                status["message"] = message
                status.setdefault("conditions", []).append(
                    {"type": "DisruptionTarget", "status": "True",
                     "reason": "TerminationByKubelet", "message": message}
                )  # fmt: skip
                if status.get("containerStatuses"):
                    status["containerStatuses"] = [_terminated("build", 137, "", "Error")]

            name = self._update_pod(job_name, change)
            for container in ("fetch", "build"):  # killed: their logs end
                self.server.end_log(self.namespace, name, container)

        return [evict, lambda: self._job_failed_by_policy(job_name)]

    def drain_steps(self, job_name: str) -> list[Callable[[], None]]:
        """``kubectl drain`` (the Eviction API): DisruptionTarget and deletionTimestamp,
        then SIGTERM, the Job failed by its pod failure policy, the pod gone."""

        def mark() -> None:
            pod = self.pod(job_name)
            pod["metadata"]["deletionTimestamp"] = _now()
            pod["status"].setdefault("conditions", []).append(
                {"type": "DisruptionTarget", "status": "True",
                 "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}
            )  # fmt: skip
            self.server.put(PODS, pod)

        return [
            mark,
            lambda: self._sigterm(job_name),
            lambda: self._job_failed_by_policy(job_name),
            lambda: self._remove_pod(job_name),
        ]

    def _job_failed_by_policy(self, job_name: str) -> None:
        self.set_job_condition(
            job_name, "Failed", "PodFailurePolicy",
            "Container build for pod triggerd/x failed with exit code 137 matching FailJob rule",
        )  # fmt: skip

    def delete_pod_steps(self, job_name: str) -> list[Callable[[], None]]:
        """A user deletes the pod: deletionTimestamp, SIGTERM, the controller fails the Job
        (backoffLimit 0), the pod is gone."""
        return [
            lambda: self._mark_deleting(job_name),
            lambda: self._sigterm(job_name),
            lambda: self.set_job_condition(job_name, "Failed", "BackoffLimitExceeded"),
            lambda: self._remove_pod(job_name),
        ]

    def deadline_steps(self, job_name: str) -> list[Callable[[], None]]:
        """activeDeadlineSeconds passed: the controller deletes the pod (which shows its
        container terminated first), then fails the Job; then the pod is gone."""
        return [
            lambda: self._mark_deleting(job_name),
            lambda: self._sigterm(job_name),
            lambda: self.set_job_condition(job_name, "Failed", "DeadlineExceeded"),
            lambda: self._remove_pod(job_name),
        ]

    def evict(self, job_name: str) -> None:
        for step in self.evict_steps(job_name):
            step()

    def drain(self, job_name: str) -> None:
        for step in self.drain_steps(job_name):
            step()

    def delete_pod(self, job_name: str) -> None:
        for step in self.delete_pod_steps(job_name):
            step()

    def exceed_deadline(self, job_name: str) -> None:
        for step in self.deadline_steps(job_name):
            step()


async def run_steps(
    steps: list[Callable[[], None]], seen: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Apply ``steps`` in order; after each but the last, ``seen`` waits until the code
    under test has looked at the result (so it meets every intermediate state)."""
    for index, step in enumerate(steps):
        step()
        if seen is not None and index < len(steps) - 1:
            await seen()


def _running(name: str) -> dict[str, Any]:
    return {"name": name, "ready": True, "state": {"running": {"startedAt": _now()}}}


def _terminated(name: str, exit_code: int, message: str, reason: str = "") -> dict[str, Any]:
    reason = reason or ("Completed" if exit_code == 0 else "Error")
    return {
        "name": name,
        "ready": False,
        "state": {
            "terminated": {"exitCode": exit_code, "reason": reason, "message": message,
                           "startedAt": _now(), "finishedAt": _now()}
        },
    }  # fmt: skip
