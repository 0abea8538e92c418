"""Build: the record of one run of a BuildConfig, and its status (pure).

A Build's spec is a snapshot of its BuildConfig's CommonSpec at creation, plus the revision
and causes that started it; its status is owned by triggerd and changes only through
:mod:`triggerd.lifecycle`. Serialises to the build.openshift.io/v1 wire form.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from triggerd.errors import Invalid
from triggerd.model import meta as metas
from triggerd.model import specs
from triggerd.model.fields import Fields

KIND = "Build"

CONFIG_LABEL = "openshift.io/build-config.name"
# OpenShift still sets the deprecated label too; tools select on either.
CONFIG_LABEL_DEPRECATED = "buildconfig"
START_POLICY_LABEL = "openshift.io/build.start-policy"
CONFIG_ANNOTATION = CONFIG_LABEL
NUMBER_ANNOTATION = "openshift.io/build.number"
#: The stored upload (``sha256:<hex>``) a binary build builds; instantiatebinary sets it and
#: a re-run copies it. The store can tell which uploads builds still use by it.
BINARY_INPUT_ANNOTATION = "triggerd.dev/binary-input"
#: instantiatebinary's ``asFile``: the upload is that one file, not an archive.
BINARY_AS_FILE_ANNOTATION = "triggerd.dev/binary-as-file"
#: The build a clone (``builds/{name}/clone``, ``start-build --from-build``) was made from.
CLONE_ANNOTATION = "openshift.io/build.clone-of"


class Phase(StrEnum):
    NEW = "New"
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    ERROR = "Error"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES

    @property
    def active(self) -> bool:
        """Started and not yet finished: holds a run slot."""
        return self in (Phase.PENDING, Phase.RUNNING)


TERMINAL_PHASES = frozenset({Phase.COMPLETE, Phase.FAILED, Phase.ERROR, Phase.CANCELLED})


class Reason(StrEnum):
    """status.reason values, with OpenShift's wording for the matching status.message."""

    FETCH_SOURCE_FAILED = "FetchSourceFailed"
    PULL_BUILDER_IMAGE_FAILED = "PullBuilderImageFailed"
    DOCKER_BUILD_FAILED = "DockerBuildFailed"
    PUSH_IMAGE_TO_REGISTRY_FAILED = "PushImageToRegistryFailed"
    CANCELLED_BUILD = "CancelledBuild"
    EXCEEDED_RETRY_TIMEOUT = "ExceededRetryTimeout"
    GENERIC_BUILD_FAILED = "GenericBuildFailed"
    INVALID_OUTPUT_REFERENCE = "InvalidOutputReference"
    CANNOT_CREATE_BUILD_POD = "CannotCreateBuildPod"
    BUILD_POD_DELETED = "BuildPodDeleted"
    BUILD_POD_EVICTED = "BuildPodEvicted"
    OUT_OF_MEMORY_KILLED = "OutOfMemoryKilled"
    POST_COMMIT_HOOK_FAILED = "PostCommitHookFailed"
    SERVER_RESTARTED = "ServerRestarted"

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES: Mapping[Reason, str] = {
    Reason.FETCH_SOURCE_FAILED: "Failed to fetch the input source.",
    Reason.PULL_BUILDER_IMAGE_FAILED: "Failed pulling builder image.",
    Reason.DOCKER_BUILD_FAILED: "Docker build strategy has failed.",
    Reason.PUSH_IMAGE_TO_REGISTRY_FAILED: "Failed to push the image to the registry.",
    Reason.CANCELLED_BUILD: "The build was cancelled by the user.",
    Reason.EXCEEDED_RETRY_TIMEOUT: "Build did not complete and retrying timed out.",
    Reason.GENERIC_BUILD_FAILED: "Generic Build failure - check logs for details.",
    Reason.INVALID_OUTPUT_REFERENCE: "Output image could not be resolved.",
    Reason.CANNOT_CREATE_BUILD_POD: "Failed creating build pod.",
    Reason.BUILD_POD_DELETED: "The pod for this build was deleted before the build completed.",
    Reason.BUILD_POD_EVICTED: "The build pod was evicted.",
    Reason.OUT_OF_MEMORY_KILLED: "The build pod was killed due to an out of memory condition.",
    Reason.POST_COMMIT_HOOK_FAILED: "Build completed successfully but the post-commit hook failed.",
    Reason.SERVER_RESTARTED: (
        "triggerd stopped while this build was running; the build was not finished. "
        "Start a new build to retry."
    ),
}


class StageName(StrEnum):
    FETCH_INPUTS = "FetchInputs"
    PULL_IMAGES = "PullImages"
    BUILD = "Build"
    POST_COMMIT = "PostCommit"
    PUSH_IMAGE = "PushImage"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    name: StageName
    start_time: datetime
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name.value,
            "startTime": metas.format_time(self.start_time),
            "durationMilliseconds": self.duration_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildStatus:
    phase: Phase = Phase.NEW
    reason: str = ""
    message: str = ""
    cancelled: bool = False
    start_timestamp: datetime | None = None
    completion_timestamp: datetime | None = None
    output_digest: str = ""
    output_docker_image_reference: str = ""
    log_snippet: str = ""
    stages: tuple[Stage, ...] = ()

    @property
    def duration_ns(self) -> int | None:
        if self.start_timestamp is None or self.completion_timestamp is None:
            return None
        return int((self.completion_timestamp - self.start_timestamp).total_seconds() * 1e9)


@dataclass(frozen=True, slots=True, kw_only=True)
class Build:
    meta: metas.ObjectMeta
    spec: specs.CommonSpec
    triggered_by: tuple[Mapping[str, Any], ...] = ()
    status: BuildStatus = field(default_factory=BuildStatus)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def config_name(self) -> str:
        return self.meta.labels.get(CONFIG_LABEL, "")

    @property
    def number(self) -> int:
        try:
            return int(self.meta.annotations.get(NUMBER_ANNOTATION, "0"))
        except ValueError:
            return 0

    @property
    def start_policy(self) -> str:
        return self.meta.labels.get(START_POLICY_LABEL, "Serial")

    @property
    def phase(self) -> Phase:
        return self.status.phase

    def to_dict(self, *, shared: bool = False) -> dict[str, Any]:
        """The wire form. ``shared=True`` skips copying the spec and causes: the result
        then shares documents with this build and must only be read (serialised at once),
        which saves a third of the cost of storing a new build."""
        if shared:
            spec = dict(self.spec.raw)
            causes = [dict(c) for c in self.triggered_by]
        else:
            spec = copy.deepcopy(dict(self.spec.raw))
            causes = [copy.deepcopy(dict(c)) for c in self.triggered_by]
        if self.spec.revision is not None:
            spec["revision"] = self.spec.revision.to_dict()
        spec["triggeredBy"] = causes
        return {
            "apiVersion": metas.API_VERSION,
            "kind": KIND,
            "metadata": self.meta.to_dict(),
            "spec": spec,
            "status": _status_to_dict(self),
        }


def _status_to_dict(build: Build) -> dict[str, Any]:
    s = build.status
    out: dict[str, Any] = {"phase": s.phase.value}
    if s.cancelled:
        out["cancelled"] = True
    if s.reason:
        out["reason"] = s.reason
    if s.message:
        out["message"] = s.message
    if s.start_timestamp:
        out["startTimestamp"] = metas.format_time(s.start_timestamp)
    if s.completion_timestamp:
        out["completionTimestamp"] = metas.format_time(s.completion_timestamp)
    if s.duration_ns is not None:
        out["duration"] = s.duration_ns
    if s.output_docker_image_reference:
        out["outputDockerImageReference"] = s.output_docker_image_reference
    if s.output_digest:
        out["output"] = {"to": {"imageDigest": s.output_digest}}
    if s.log_snippet:
        out["logSnippet"] = s.log_snippet
    if s.stages:
        out["stages"] = [stage.to_dict() for stage in s.stages]
    if build.config_name:
        out["config"] = {
            "kind": "BuildConfig",
            "namespace": build.namespace,
            "name": build.config_name,
        }
    return out


def from_dict(doc: Mapping[str, Any]) -> Build:
    """Load a Build previously written by :meth:`Build.to_dict` (stored or from a cluster)."""
    fields = Fields()
    meta = metas.parse_meta(doc, fields)
    spec_doc = dict(fields.mapping(doc, "spec", "spec"))
    triggered_by = tuple(
        c for c in spec_doc.pop("triggeredBy", None) or [] if isinstance(c, Mapping)
    )
    spec = specs.parse_common_spec(spec_doc, fields)
    status_doc = fields.mapping(doc, "status", "status")
    if fields.errors:
        raise Invalid(KIND, meta.name, fields.errors)
    return Build(meta=meta, spec=spec, triggered_by=triggered_by, status=_parse_status(status_doc))


def _parse_status(doc: Mapping[str, Any]) -> BuildStatus:
    def time(key: str) -> datetime | None:
        value = doc.get(key)
        return metas.parse_time(value) if isinstance(value, str) else None

    stages: list[Stage] = []
    for item in doc.get("stages") or []:
        try:
            start = metas.parse_time(item["startTime"])
            if start is not None:
                stages.append(
                    Stage(
                        name=StageName(item["name"]),
                        start_time=start,
                        duration_ms=int(item.get("durationMilliseconds", 0)),
                    )
                )
        except (KeyError, ValueError, TypeError):
            continue
    output = doc.get("output") or {}
    return BuildStatus(
        phase=Phase(doc.get("phase", Phase.NEW.value)),
        reason=str(doc.get("reason", "")),
        message=str(doc.get("message", "")),
        cancelled=bool(doc.get("cancelled", False)),
        start_timestamp=time("startTimestamp"),
        completion_timestamp=time("completionTimestamp"),
        output_digest=str((output.get("to") or {}).get("imageDigest", "")),
        output_docker_image_reference=str(doc.get("outputDockerImageReference", "")),
        log_snippet=str(doc.get("logSnippet", "")),
        stages=tuple(stages),
    )
