"""Render a Build's plan into a batch/v1 Job, and read a finished Job's pod back (pure).

Planning for the Kubernetes executor: the same :func:`triggerd.planning.buildah.render` plan
the host executor runs, split in two. An init container (non-root, every capability
dropped) runs the fetch steps — a shallow fetch of exactly the build's commit — and a build
container (uid 0 with only the capabilities buildah needs, no privilege escalation, read-only
root) runs the rest with ``python -m triggerd.runner``. Both plans travel in pod annotations
projected into files by a downward-API volume, so no ConfigMap has to be created or cleaned
up; each container writes its result JSON to its termination message, which is how the
digest, the revision and the failure reason come back.

The reading half (:func:`read_pod`, :func:`read_job`, :func:`explain_stop`) turns pod and
Job status documents into an Outcome, with OpenShift's reasons for OOM kills, evictions and
deadlines. A pod stopped from outside (its containers got SIGTERM, it is being deleted)
does not say why by itself: its Job does (deadline, eviction policy, gone after a cancel).

Evictions end the build, as on OpenShift: a pod with a ``DisruptionTarget`` condition (a
drain, preemption, node pressure) or ``reason: Evicted`` is Failed/BuildPodEvicted, and the
Job's pod failure policy fails the Job on such a pod instead of starting a second one (which
would build and push again for a build already reported Failed). The executor deletes the
Job after every Failed or Error outcome for the same reason.

This module never talks to the API server, never mounts a Docker socket, and never puts a
secret value in a manifest (credentials are Secret volume references).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from triggerd.executors.base import Cancelled, Failed, Outcome, Succeeded
from triggerd.model import buildconfigs, specs
from triggerd.model import meta as metas
from triggerd.model.builds import Build, Reason, Stage, StageName
from triggerd.model.specs import SourceRevision
from triggerd.planning import buildah
from triggerd.planning.buildah import PlanContext
from triggerd.planning.needs import needs
from triggerd.planning.plan import (
    Capture,
    Command,
    OutputName,
    Plan,
    Step,
    revision_from_outputs,
)

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "triggerd"
BUILD_NAME_LABEL: Final = "openshift.io/build.name"
JOB_LABEL: Final = "triggerd.dev/job"
#: On the Job and its pods, so pods are found by the build's identity: a Job of an earlier
#: same-named build (or a same-named build of another namespace) never matches.
BUILD_NAMESPACE_LABEL: Final = "triggerd.dev/build-namespace"
BUILD_UID_LABEL: Final = "triggerd.dev/build-uid"
BUILD_NAMESPACE_ANNOTATION: Final = "triggerd.dev/build-namespace"
BUILD_ANNOTATION: Final = "triggerd.dev/build"
BUILD_UID_ANNOTATION: Final = "triggerd.dev/build-uid"
FETCH_PLAN_ANNOTATION: Final = "triggerd.dev/fetch-plan"
BUILD_PLAN_ANNOTATION: Final = "triggerd.dev/build-plan"
#: On the BuildConfig (inherited by its Builds, never from a BuildRequest): ask for a
#: privileged build pod.
PRIVILEGED_ANNOTATION: Final = buildconfigs.PRIVILEGED_ANNOTATION
#: The build's layer cache repository (or "none"), as for the host executor.
APPARMOR_ANNOTATION_PREFIX: Final = "container.apparmor.security.beta.kubernetes.io/"

FETCH_CONTAINER: Final = "fetch"
BUILD_CONTAINER: Final = "build"
WORKSPACE: Final = "/workspace"
PLAN_DIR: Final = "/etc/triggerd/plan"
STORAGE_MOUNT: Final = "/var/lib/containers"
STORAGE_ROOT: Final = f"{STORAGE_MOUNT}/storage"
STORAGE_RUNROOT: Final = f"{STORAGE_MOUNT}/run"
# Mount points of Secret volumes, not secrets.
PUSH_SECRET_DIR: Final = "/var/run/secrets/triggerd/push"  # noqa: S105
PULL_SECRET_DIR: Final = "/var/run/secrets/triggerd/pull"  # noqa: S105
#: One directory per source.images[].pullSecret, named after the Secret.
IMAGE_PULL_SECRETS_DIR: Final = "/var/run/secrets/triggerd/image-pull"
SOURCE_SECRET_DIR: Final = "/var/run/secrets/triggerd/source"  # noqa: S105
#: Where source.secrets, dockerStrategy.volumes and customStrategy.secrets are mounted,
#: one directory per Secret / ConfigMap name (read-only volumes, never copied by triggerd).
INPUT_SECRETS_DIR: Final = "/var/run/secrets/triggerd/inputs"
INPUT_CONFIG_MAPS_DIR: Final = "/var/run/configmaps/triggerd/inputs"
#: The pod's own emptyDir (the root filesystem is read-only), not the host's /tmp.
POD_TMP: Final = "/tmp"  # noqa: S108
AUTH_FILE: Final = "config.json"
SSH_KEY_FILE: Final = "ssh-privatekey"
#: Keys of a kubernetes.io/basic-auth source secret.
BASIC_USERNAME_FILE: Final = "username"
BASIC_PASSWORD_FILE: Final = "password"  # noqa: S105 (a key name)
#: Input volumes are readable by the build's own (possibly non-root) user inside buildah,
#: as the host executor's 0644 copies are; the source secret is for the init user only.
INPUT_MODE: Final = 0o444
SOURCE_SECRET_MODE: Final = 0o440
TERMINATION_LOG: Final = "/dev/termination-log"
#: What buildah needs to build without privileges (measured: SETUID/SETGID/SETFCAP for
#: user namespaces and file capabilities, CHOWN/DAC_OVERRIDE/FOWNER/FSETID for layers).
BUILD_CAPABILITIES: Final = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "SETFCAP",
)  # fmt: skip
_MAX_NAME: Final = 63
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9-]")
_DIGEST = re.compile(r'"image\.digest"\s*:\s*"(sha256:[0-9a-f]{64})"')


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """The cluster-side settings a Job needs (from the ``kubernetes`` settings)."""

    namespace: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    seccomp_profile: str = "profiles/triggerd-buildah.json"
    apparmor_unconfined: bool = False
    allow_privileged: bool = False
    storage_size_limit: str = "20Gi"
    ttl_seconds_after_finished: int = 3600
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: the image's own non-root user (OpenSSH needs a passwd entry for it)
    fetch_uid: int = 10001
    insecure_registries: frozenset[str] = frozenset()
    #: ``layerCacheRegistry``: builds cache layers in ``<it>/<namespace>/<buildconfig>``
    layer_cache_registry: str | None = None
    #: ``imageStreamRegistry``: where ImageStreamTag outputs (and builders) live
    image_stream_registry: str | None = None
    #: the Build custom resource's uid when the Build is one (ownerReference), else ""
    owner_uid: str = ""
    owner_api_version: str = "triggerd.dev/v1"


# Names -------------------------------------------------------------------------------------


def name_job(namespace: str, build_name: str) -> str:
    """The Job's name, from the build's namespace and name: every build namespace shares
    the one namespace Jobs run in, so ``team-a/app-1`` and ``team-b/app-1`` must not meet.

    ``<namespace>-<build>`` (cut to fit), a hash of the full identity and ``-build`` like
    OpenShift's build pod: a DNS label of at most 63 characters, the same every time."""
    digest = hashlib.sha256(f"{namespace}/{build_name}".encode()).hexdigest()[:8]
    room = _MAX_NAME - len("-") - len(digest) - len("-build")
    head = _NOT_LABEL_CHARS.sub("-", f"{namespace}-{build_name}".lower())[:room].strip("-")
    return f"{head}-{digest}-build"


def pod_selector(namespace: str, build_name: str, uid: str = "") -> str:
    """The label selector of the build's pods (of its uid's Job when ``uid`` is known)."""
    parts = [
        f"{JOB_LABEL}={name_job(namespace, build_name)}",
        f"{BUILD_NAMESPACE_LABEL}={label_value(namespace)}",
        f"{BUILD_NAME_LABEL}={label_value(build_name)}",
    ]
    if uid:
        parts.append(f"{BUILD_UID_LABEL}={label_value(uid)}")
    return ",".join(parts)


def legacy_name_job(namespace: str, build_name: str) -> str:
    """The name triggerd gave a build's Job before names carried the namespace:
    ``<build>-build``, or (when that is no DNS label) the cut name, a hash of the identity
    and ``-build``. Such a Job may still run a build across an upgrade; it is adopted only
    when :func:`belongs_to` says it is that build's (the name alone does not: builds of two
    namespaces shared it)."""
    wanted = f"{build_name}-build"
    if len(wanted) <= _MAX_NAME and not _NOT_LABEL_CHARS.search(wanted):
        return wanted
    digest = hashlib.sha256(f"{namespace}/{build_name}".encode()).hexdigest()[:10]
    head = _NOT_LABEL_CHARS.sub("-", build_name.lower())[: _MAX_NAME - 17].strip("-")
    return f"{head}-{digest}-build"


def legacy_pod_selector(namespace: str, build_name: str) -> str:
    """The label selector of the pods of the build's :func:`legacy_name_job` Job, which had
    neither the namespace nor the uid label: it may also match pods of another build of
    the same name, so callers keep only the pods :func:`belongs_to` accepts."""
    return (
        f"{JOB_LABEL}={legacy_name_job(namespace, build_name)},"
        f"{BUILD_NAME_LABEL}={label_value(build_name)}"
    )


def belongs_to(obj: Mapping[str, Any], namespace: str, build_name: str, uid: str = "") -> bool:
    """Whether a Job or pod is the build's, by the annotations every version of triggerd
    has written on both (namespace, name and, when ``uid`` is given, the build's uid)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if annotations.get(BUILD_NAMESPACE_ANNOTATION) != namespace:
        return False
    if annotations.get(BUILD_ANNOTATION) != build_name:
        return False
    return not uid or annotations.get(BUILD_UID_ANNOTATION) == uid


def label_value(text: str) -> str:
    """``text`` as a label value (≤63, alphanumeric ends), hashed when it does not fit."""
    if len(text) <= _MAX_NAME and re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9]', '-', text)[:50].strip('-')}-{digest}"


# Plans -------------------------------------------------------------------------------------


def git_credential_helper(directory: str) -> str:
    """A git credential helper (a shell snippet, run by git through sh) that answers with
    the basic-auth username and password files of the source secret mounted at
    ``directory``, and with nothing for an ssh-auth secret. Only paths are in it, so the
    plan (a pod annotation) never holds a credential."""
    user, password = f"{directory}/{BASIC_USERNAME_FILE}", f"{directory}/{BASIC_PASSWORD_FILE}"
    return (
        '!f() { test "$1" = get || return 0; '
        f"test -f {user} || test -f {password} || return 0; "
        f"printf 'username=%s\\npassword=%s\\n' \"$(cat {user} 2>/dev/null)\" "
        f'"$(cat {password} 2>/dev/null)"; }}; f'
    )


def plan_context(build: Build, options: JobOptions) -> PlanContext:
    """The PlanContext for a build pod: the paths the pod spec below mounts."""
    reads = needs(build)
    git_secret = reads.fetch_secret is not None
    push_auth = f"{PUSH_SECRET_DIR}/{AUTH_FILE}" if reads.push_secret else None
    pull_auth = f"{PULL_SECRET_DIR}/{AUTH_FILE}" if reads.pull_secret else None
    return PlanContext(
        storage_driver="vfs",
        root=STORAGE_ROOT,
        runroot=STORAGE_RUNROOT,
        isolation="chroot",
        insecure_registries=options.insecure_registries,
        image_stream_registry=options.image_stream_registry,
        push_auth_file=push_auth,
        pull_auth_file=pull_auth,
        # Both ways: an ssh-auth secret has the key file, a basic-auth one the two files
        # the helper reads; which keys it has is only known where it is mounted.
        git_ssh_key_file=f"{SOURCE_SECRET_DIR}/{SSH_KEY_FILE}" if git_secret else None,
        git_credential_helper=git_credential_helper(SOURCE_SECRET_DIR) if git_secret else None,
        image_pull_auth_files={
            name: f"{IMAGE_PULL_SECRETS_DIR}/{name}/{AUTH_FILE}"
            for name in reads.image_pull_secrets
        },
        secret_dirs={name: f"{INPUT_SECRETS_DIR}/{name}" for name in reads.secrets},
        config_map_dirs={name: f"{INPUT_CONFIG_MAPS_DIR}/{name}" for name in reads.config_maps},
        cache_repository=buildah.cache_repository(build, options.layer_cache_registry),
        # buildah build takes one --authfile for its pulls and its --cache-to push: with a
        # pull secret, the plan merges the push credentials in for the cache repository
        # (as on the host). Without one there is no --authfile, and REGISTRY_AUTH_FILE —
        # the push secret — serves the pulls and the cache push already.
        cache_auth_file=push_auth if pull_auth else None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SplitPlan:
    fetch: Plan  # runs in the init container, non-root, network access to the git server
    build: Plan  # runs in the build container


def split_plan(plan: Plan) -> SplitPlan:
    """The fetch steps for the init container; the rest for the build container.

    The build container re-reads the commit metadata from the checkout (the image labels
    need it as captured outputs), with ``safe.directory`` set because the checkout belongs
    to the init container's non-root user.
    """
    fetch_steps = tuple(s for s in plan.steps if s.stage is StageName.FETCH_INPUTS)
    rest = tuple(s for s in plan.steps if s.stage is not StageName.FETCH_INPUTS)
    recapture: list[Step] = []
    for step in fetch_steps:
        action = step.action
        if isinstance(action, Command) and action.capture is Capture.REVISION:
            env = dict(action.env)
            env.update(
                {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
                 "GIT_CONFIG_VALUE_0": "*"}
            )  # fmt: skip
            recapture.append(dataclasses.replace(step, action=dataclasses.replace(action, env=env)))
    return SplitPlan(
        fetch=dataclasses.replace(plan, steps=fetch_steps, image=""),
        build=dataclasses.replace(plan, steps=tuple(recapture) + rest),
    )


# The Job -----------------------------------------------------------------------------------


def render_job(build: Build, plan: Plan, options: JobOptions) -> dict[str, Any]:
    """The batch/v1 Job that runs ``plan`` (rendered with :func:`plan_context`)."""
    parts = split_plan(plan)
    job_name = name_job(build.namespace, build.name)
    labels = {
        BUILD_NAME_LABEL: label_value(build.name),
        BUILD_NAMESPACE_LABEL: label_value(build.namespace),
        MANAGED_BY_LABEL: MANAGED_BY,
        JOB_LABEL: job_name,
    }
    if build.meta.uid:
        labels[BUILD_UID_LABEL] = label_value(build.meta.uid)
    annotations = {
        BUILD_NAMESPACE_ANNOTATION: build.namespace,
        BUILD_ANNOTATION: build.name,
        BUILD_UID_ANNOTATION: build.meta.uid,
    }
    privileged = options.allow_privileged and _wants_privileged(build)
    pod_annotations = {
        **annotations,
        FETCH_PLAN_ANNOTATION: json.dumps(parts.fetch.to_dict(), sort_keys=True),
        BUILD_PLAN_ANNOTATION: json.dumps(parts.build.to_dict(), sort_keys=True),
    }
    if options.apparmor_unconfined:
        pod_annotations[APPARMOR_ANNOTATION_PREFIX + BUILD_CONTAINER] = "unconfined"
    metadata: dict[str, Any] = {
        "name": job_name,
        "namespace": options.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if options.owner_uid and build.namespace == options.namespace:
        # Owner references cannot cross namespaces; the Job is then cleaned by its TTL.
        metadata["ownerReferences"] = [
            {
                "apiVersion": options.owner_api_version,
                "kind": "Build",
                "name": build.name,
                "uid": options.owner_uid,
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
    node_selector = {**options.node_selector, **build.spec.node_selector}
    inputs = _input_volumes(build, parts)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"fsGroup": options.fetch_uid},
        "initContainers": [
            _fetch_container(build, options, [i.mount for i in inputs if i.in_fetch])
        ],
        "containers": [
            _build_container(
                build, options, [i.mount for i in inputs if i.in_build], privileged=privileged
            )
        ],
        "volumes": _volumes(build, options) + [i.volume for i in inputs],
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": build.spec.completion_deadline_seconds,
            "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
            # An evicted or preempted pod ends the build as Failed/BuildPodEvicted (as on
            # OpenShift, and as the executor reports it): the Job fails at once instead of
            # starting a second pod that would build and push for a finished build. The
            # condition's reason (PodFailurePolicy) tells the executor why, should it only
            # see the Job.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    }
                ]
            },
            "template": {
                "metadata": {"labels": dict(labels), "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def _wants_privileged(build: Build) -> bool:
    return build.meta.annotations.get(PRIVILEGED_ANNOTATION, "").lower() == "true"


def _runner_command(plan_file: str) -> list[str]:
    return ["python", "-m", "triggerd.runner", f"{PLAN_DIR}/{plan_file}", WORKSPACE,
            "--result", TERMINATION_LOG]  # fmt: skip


def _common_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": POD_TMP},
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Input:
    """One Secret/ConfigMap volume of the build's inputs and which containers mount it."""

    volume: dict[str, Any]
    mount: dict[str, Any]
    in_fetch: bool
    in_build: bool


def _input_volumes(build: Build, parts: SplitPlan) -> list[_Input]:
    """A read-only volume per input the plans refer to, mounted only into the container
    whose plan uses it: copies into the context happen in the init container, RUN-time
    mounts (buildah --volume, custom builder mounts) in the build container."""
    fetch_text = json.dumps(parts.fetch.to_dict())
    build_text = json.dumps(parts.build.to_dict())

    def used(text: str, directory: str) -> bool:
        quoted = json.dumps(directory)[:-1]  # the opening quote and the path
        return any(quoted + end in text for end in ('"', ":", "/"))

    reads = needs(build)
    found: list[_Input] = []
    for kind, names, root in (
        ("secret", reads.secrets, INPUT_SECRETS_DIR),
        ("configMap", reads.config_maps, INPUT_CONFIG_MAPS_DIR),
    ):
        for index, name in enumerate(names):
            directory = f"{root}/{name}"
            in_fetch, in_build = used(fetch_text, directory), used(build_text, directory)
            if not (in_fetch or in_build):
                continue
            volume_name = f"input-{kind.lower()}-{index}"
            source = (
                {"secretName": name, "defaultMode": INPUT_MODE}
                if kind == "secret"
                else {"name": name, "defaultMode": INPUT_MODE}
            )
            found.append(
                _Input(
                    volume={"name": volume_name, kind: source},
                    mount={"name": volume_name, "mountPath": directory, "readOnly": True},
                    in_fetch=in_fetch,
                    in_build=in_build,
                )
            )
    return found


def _fetch_container(
    build: Build, options: JobOptions, input_mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    mounts = _common_mounts() + input_mounts
    if needs(build).fetch_secret is not None:
        mounts.append({"name": "source-secret", "mountPath": SOURCE_SECRET_DIR, "readOnly": True})
    return {
        "name": FETCH_CONTAINER,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": _runner_command("fetch.json"),
        "env": [{"name": "HOME", "value": POD_TMP}],
        "volumeMounts": mounts,
        "resources": _resources(options),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsUser": options.fetch_uid,
            "runAsGroup": options.fetch_uid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _build_container(
    build: Build, options: JobOptions, input_mounts: list[dict[str, Any]], *, privileged: bool
) -> dict[str, Any]:
    env = [
        {"name": "HOME", "value": POD_TMP},
        {"name": "BUILDAH_ISOLATION", "value": "chroot"},
        {"name": "STORAGE_DRIVER", "value": "vfs"},
    ]
    mounts = [*_common_mounts(), {"name": "storage", "mountPath": STORAGE_MOUNT}, *input_mounts]
    reads = needs(build)
    if reads.push_secret:
        env.append({"name": "REGISTRY_AUTH_FILE", "value": f"{PUSH_SECRET_DIR}/{AUTH_FILE}"})
        mounts.append({"name": "push-secret", "mountPath": PUSH_SECRET_DIR, "readOnly": True})
    if reads.pull_secret:
        mounts.append({"name": "pull-secret", "mountPath": PULL_SECRET_DIR, "readOnly": True})
    for index, name in enumerate(reads.image_pull_secrets):
        mounts.append(
            {
                "name": f"image-pull-{index}",
                "mountPath": f"{IMAGE_PULL_SECRETS_DIR}/{name}",
                "readOnly": True,
            }
        )
    security: dict[str, Any]
    if privileged:
        # Only when the settings allow it and the BuildConfig asks; never a Docker socket.
        security = {"runAsUser": 0, "privileged": True, "readOnlyRootFilesystem": True}
    else:
        security = {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": list(BUILD_CAPABILITIES)},
            "seccompProfile": {
                "type": "Localhost",
                "localhostProfile": options.seccomp_profile,
            },
        }
    return {
        "name": BUILD_CONTAINER,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": _runner_command("build.json"),
        "env": env,
        "volumeMounts": mounts,
        "resources": build_resources(build, options),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": security,
    }


def _resources(options: JobOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.requests:
        out["requests"] = dict(options.requests)
    if options.limits:
        out["limits"] = dict(options.limits)
    return out


def build_resources(build: Build, options: JobOptions) -> dict[str, Any]:
    """The build container's resources: the build's ``spec.resources`` (OpenShift's field,
    from its BuildConfig) over the settings' defaults, resource by resource.

    A default may not contradict what the build asks (the API refuses a request above its
    limit): a default limit below the build's request is raised to it, and a default request
    above the build's limit is lowered to it."""
    asked = build.spec.resources
    requests = {**options.requests, **asked.requests}
    limits = {**options.limits, **asked.limits}
    for name in set(requests) & set(limits):
        request, limit = specs.parse_quantity(requests[name]), specs.parse_quantity(limits[name])
        if request <= limit:
            continue
        if name in asked.requests and name not in asked.limits:
            limits[name] = requests[name]
        elif name in asked.limits and name not in asked.requests:
            requests[name] = limits[name]
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _volumes(build: Build, options: JobOptions) -> list[dict[str, Any]]:
    def annotation(path: str, key: str) -> dict[str, Any]:
        return {"path": path, "fieldRef": {"fieldPath": f"metadata.annotations['{key}']"}}

    volumes: list[dict[str, Any]] = [
        {"name": "workspace", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "storage", "emptyDir": {"sizeLimit": options.storage_size_limit}},
        {
            "name": "plan",
            "downwardAPI": {
                "items": [
                    annotation("fetch.json", FETCH_PLAN_ANNOTATION),
                    annotation("build.json", BUILD_PLAN_ANNOTATION),
                ]
            },
        },
    ]

    def docker_secret(volume: str, secret: str) -> dict[str, Any]:
        return {
            "name": volume,
            "secret": {
                "secretName": secret,
                "items": [{"key": ".dockerconfigjson", "path": AUTH_FILE}],
                "defaultMode": 0o400,
            },
        }

    reads = needs(build)
    if reads.push_secret:
        volumes.append(docker_secret("push-secret", reads.push_secret))
    if reads.pull_secret:
        volumes.append(docker_secret("pull-secret", reads.pull_secret))
    for index, name in enumerate(reads.image_pull_secrets):
        volumes.append(docker_secret(f"image-pull-{index}", name))
    if reads.fetch_secret:
        volumes.append(
            {
                "name": "source-secret",
                "secret": {
                    # Every key: ssh-privatekey for ssh-auth, username/password for
                    # basic-auth (an items list naming a missing key keeps the pod from
                    # starting). Group-readable: the init user reads it as the fsGroup.
                    "secretName": reads.fetch_secret,
                    "defaultMode": SOURCE_SECRET_MODE,
                },
            }
        )
    return volumes


# Reading status back ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerResult:
    """What a container's termination message says (the runner's result JSON)."""

    succeeded: bool
    outputs: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    message: str = ""
    stopped: str = ""
    snippet: str = ""
    stages: tuple[Stage, ...] = ()
    raw_text: str = ""  # when the message was not JSON (FallbackToLogsOnError: log tail)

    @property
    def revision(self) -> SourceRevision | None:
        outputs: dict[OutputName, str] = {}
        for key, value in self.outputs.items():
            try:
                outputs[OutputName(key)] = value
            except ValueError:
                continue
        return revision_from_outputs(outputs)


def parse_termination_message(text: str) -> RunnerResult:
    """Parse the runner's result; tolerate a message the kubelet cut at 4096 bytes."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        digest = _DIGEST.search(text)
        return RunnerResult(
            succeeded='"succeeded": true' in text,
            outputs={OutputName.DIGEST.value: digest.group(1)} if digest else {},
            raw_text=text,
        )
    stages = tuple(_parse_stages(doc.get("stages")))
    outputs = doc.get("outputs") or {}
    return RunnerResult(
        succeeded=bool(doc.get("succeeded")),
        outputs={str(k): str(v) for k, v in outputs.items()} if isinstance(outputs, dict) else {},
        reason=str(doc.get("reason", "")),
        message=str(doc.get("message", "")),
        stopped=str(doc.get("stopped", "")),
        snippet=str(doc.get("logSnippet", "")),
        stages=stages,
    )


def _parse_stages(items: Any) -> list[Stage]:
    stages: list[Stage] = []
    for item in items if isinstance(items, list) else []:
        try:
            start = metas.parse_time(str(item["startTime"]))
            if start is not None:
                stages.append(
                    Stage(
                        name=StageName(item["name"]),
                        start_time=start,
                        duration_ms=int(item.get("durationMilliseconds", 0)),
                    )
                )
        except (KeyError, ValueError, TypeError):
            continue  # a stage we cannot read costs only its timing
    return stages


@dataclass(frozen=True, slots=True, kw_only=True)
class PodView:
    """What a build pod's status says so far."""

    started: bool = False  # the build container is running or has run
    fetch_result: RunnerResult | None = None  # the init container finished
    build_result: RunnerResult | None = None
    outcome: Outcome | None = None  # the pod reached an end that says how the build went
    #: the pod was stopped from outside (its containers got SIGTERM or SIGKILL, it is
    #: being deleted) without a result of its own: the Job says why (:func:`explain_stop`)
    stopped: bool = False
    fetch_log_ready: bool = False  # containers whose logs can be read
    build_log_ready: bool = False


def read_pod(pod: Mapping[str, Any], *, image: str, deadline_seconds: int) -> PodView:
    """Interpret one build pod's status (pure; ``image`` is where a success was pushed).

    A real kubelet reports a pod's end in steps (deletionTimestamp, containers terminated,
    phase, then the pod is gone); each step read here gives the same answer or none yet."""
    status = pod.get("status") or {}
    deleting = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    fetch = _container_status(status.get("initContainerStatuses"), FETCH_CONTAINER)
    build = _container_status(status.get("containerStatuses"), BUILD_CONTAINER)
    fetch_state = (fetch or {}).get("state") or {}
    build_state = (build or {}).get("state") or {}
    fetch_done = fetch_state.get("terminated")
    build_done = build_state.get("terminated")
    fetch_result = (
        parse_termination_message(fetch_done.get("message") or "") if fetch_done else None
    )
    build_result = (
        parse_termination_message(build_done.get("message") or "") if build_done else None
    )
    view = PodView(
        started=status.get("phase") == "Running" or bool(build_state.get("running") or build_done),
        fetch_result=fetch_result,
        build_result=build_result,
        fetch_log_ready=bool(fetch_state.get("running") or fetch_done),
        build_log_ready=bool(build_state.get("running") or build_done),
    )
    disruption = _disruption(status)
    if disruption is not None:
        # Evicted (node pressure, drain, preemption): whatever the containers show now
        # is the kill's doing, not the build's.
        return dataclasses.replace(view, outcome=evicted(disruption))
    if fetch_done and fetch_done.get("exitCode", 0) != 0:
        if _stopped_from_outside(fetch_done, fetch_result):
            return dataclasses.replace(view, stopped=True)
        return dataclasses.replace(
            view, outcome=_failure(fetch_done, fetch_result, Reason.FETCH_SOURCE_FAILED,
                                   deadline_seconds)
        )  # fmt: skip
    if build_done and build_result is not None:
        if build_done.get("exitCode", 1) == 0 and build_done.get("reason") != "OOMKilled":
            digest = build_result.outputs.get(OutputName.DIGEST.value, "") if image else ""
            return dataclasses.replace(
                view, outcome=Succeeded(digest=digest, image_reference=image)
            )
        if _stopped_from_outside(build_done, build_result):
            return dataclasses.replace(view, stopped=True)
        return dataclasses.replace(
            view,
            outcome=_failure(build_done, build_result, Reason.GENERIC_BUILD_FAILED,
                             deadline_seconds),
        )  # fmt: skip
    if deleting or status.get("phase") == "Failed":
        # Going away (or gone wrong) before the build container ended by itself.
        return dataclasses.replace(view, stopped=True)
    return view


def _disruption(status: Mapping[str, Any]) -> str | None:
    """The eviction message when the pod was disrupted, else None."""
    for condition in status.get("conditions") or []:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "DisruptionTarget"
            and condition.get("status") == "True"
        ):
            return str(condition.get("message") or status.get("message") or "")
    if status.get("reason") == "Evicted":
        return str(status.get("message") or "")
    return None


def _stopped_from_outside(terminated: Mapping[str, Any], result: RunnerResult | None) -> bool:
    """The container was ended by a signal, not by its own failure: the runner says it was
    stopped (it got SIGTERM), or the kernel's SIGTERM/SIGKILL ended it without a result."""
    if terminated.get("reason") == "OOMKilled":
        return False
    if result is not None and result.stopped == "Cancelled":
        return True
    has_result = result is not None and not result.raw_text and (result.reason or result.stopped)
    return not has_result and terminated.get("exitCode") in (137, 143)


def _container_status(statuses: Any, name: str) -> Mapping[str, Any] | None:
    for item in statuses or []:
        if isinstance(item, Mapping) and item.get("name") == name:
            return item
    return None


def _failure(
    terminated: Mapping[str, Any],
    result: RunnerResult | None,
    default: Reason,
    deadline_seconds: int,
) -> Failed:
    snippet = result.snippet if result else ""
    if terminated.get("reason") == "OOMKilled":
        return Failed(
            reason=Reason.OUT_OF_MEMORY_KILLED,
            message=Reason.OUT_OF_MEMORY_KILLED.message,
            log_snippet=snippet,
        )
    if result is not None and result.stopped == "DeadlineExceeded":
        return deadline_exceeded(deadline_seconds, snippet)
    if result is not None and result.reason:
        try:
            reason = Reason(result.reason)
        except ValueError:
            reason = default
        return Failed(
            reason=reason,
            message=f"{reason.message} {result.message}.".replace("..", ".").strip(),
            log_snippet=snippet,
        )
    text = (result.raw_text if result else "").strip()
    code = terminated.get("exitCode")
    return Failed(
        reason=default,
        message=f"{default.message} (exit code {code})",
        log_snippet="\n".join(text.splitlines()[-10:]),
    )


def deadline_exceeded(deadline_seconds: int, snippet: str = "") -> Failed:
    return Failed(
        reason=Reason.EXCEEDED_RETRY_TIMEOUT,
        message=f"{Reason.EXCEEDED_RETRY_TIMEOUT.message} "
        f"(completionDeadlineSeconds={deadline_seconds})",
        log_snippet=snippet,
    )


def pod_deleted() -> Failed:
    return Failed(
        reason=Reason.BUILD_POD_DELETED, message=Reason.BUILD_POD_DELETED.message, log_snippet=""
    )


def evicted(message: str = "") -> Failed:
    return Failed(
        reason=Reason.BUILD_POD_EVICTED,
        message=f"{Reason.BUILD_POD_EVICTED.message} {message}".strip(),
        log_snippet="",
    )


def read_job(job: Mapping[str, Any], *, deadline_seconds: int) -> Outcome | None:
    """An Outcome when the Job itself failed (deadline, eviction policy, a lost pod).

    ``FailureTarget`` is the controller's decision before it stops the pod (Kubernetes
    1.31+ sets it first for deadlines and pod failure policies); ``Failed`` follows."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        kind, reason = condition.get("type"), condition.get("reason")
        if kind not in ("Failed", "FailureTarget") or condition.get("status") != "True":
            continue
        if reason == "DeadlineExceeded":
            return deadline_exceeded(deadline_seconds)
        if reason == "PodFailurePolicy":
            return evicted(str(condition.get("message") or ""))
        if kind == "Failed":
            return pod_deleted()
    return None


def explain_stop(
    job: Mapping[str, Any] | None,
    *,
    deadline_seconds: int,
    cancelled: bool,
    now: datetime,
) -> Outcome | None:
    """Why a build pod was stopped from outside, from its Job (None: the Job has not said
    yet, look again later). Gone: cancelled when the build was, else deleted under it."""
    if job is None:
        return Cancelled() if cancelled else pod_deleted()
    decided = read_job(job, deadline_seconds=deadline_seconds)
    if decided is not None:
        return decided
    start = metas.parse_time(str((job.get("status") or {}).get("startTime") or ""))
    active = (job.get("spec") or {}).get("activeDeadlineSeconds")
    if start is not None and isinstance(active, int) and now >= start + timedelta(seconds=active):
        # The deadline is what stopped it; the controller's condition is on its way.
        return deadline_exceeded(deadline_seconds)
    return None


def job_finished(job: Mapping[str, Any]) -> bool:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return True
    return False
