"""Plays the Job controller and the kubelet against :class:`FakeApiServer`'s store.

When a Job is created, a pod is made from its template (owned by the Job, so deleting the
Job removes it); tests then move it through the states a real node would produce:
containers waiting/running/terminated with exit codes, reasons and termination messages,
log output, evictions, OOM kills, and the Job conditions the controller sets.
"""

from __future__ import annotations

import copy
import json
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

    def set_job_condition(self, job_name: str, type_: str, reason: str) -> None:
        job = self.job(job_name)
        assert job is not None
        job.setdefault("status", {})["conditions"] = [
            {"type": type_, "status": "True", "reason": reason, "lastTransitionTime": _now()}
        ]
        self.server.put(JOBS, job)

    # Kubelet ------------------------------------------------------------------------------
    def _update_pod(self, job_name: str, change: Any) -> str:
        pod = self.pod(job_name)
        change(pod["status"])
        self.server.put(PODS, pod)
        return str(pod["metadata"]["name"])

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

    def evict(self, job_name: str) -> None:
        def change(status: dict[str, Any]) -> None:
            status["phase"] = "Failed"
            status["reason"] = "Evicted"
            status["message"] = "The node was low on resource: ephemeral-storage."

        self._update_pod(job_name, change)

    def delete_pod(self, job_name: str) -> None:
        """A user deletes the pod; the controller then fails the Job (backoffLimit 0)."""
        pod = self.pod(job_name)
        self.server.remove(PODS, self.namespace, pod["metadata"]["name"])
        self.set_job_condition(job_name, "Failed", "BackoffLimitExceeded")

    def exceed_deadline(self, job_name: str) -> None:
        """activeDeadlineSeconds passed: the controller fails the Job, then kills the pod."""
        self.set_job_condition(job_name, "Failed", "DeadlineExceeded")
        pod = self.pod(job_name)
        self.server.remove(PODS, self.namespace, pod["metadata"]["name"])


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
