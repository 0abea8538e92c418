"""The Job renderer (pure): manifests validated against the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests import factories
from triggerd.executors.base import Cancelled, Failed, Succeeded
from triggerd.model import buildconfigs, requests
from triggerd.model.builds import Build, Reason, StageName
from triggerd.planning import buildah, jobs
from triggerd.planning.plan import (
    Capture,
    Command,
    CopyInto,
    InWorkspace,
    MergeAuthFiles,
    Plan,
    RunInImage,
)

#: The oldest Kubernetes the manifests must be valid for (podFailurePolicy is on by default).
K8S_VERSION = "1.30.0"
SECRET_WORDS = ("s3cr3t-value",)


def make_build(name: str = "app", *, annotations: dict[str, str] | None = None,
               request: requests.BuildRequest | None = None, namespace: str = "triggerd",
               **spec: Any) -> Build:  # fmt: skip
    """A Build of a BuildConfig with ``annotations`` and ``spec``, started by ``request``."""
    doc = factories.buildconfig_doc(name, namespace=namespace)
    doc["spec"].update(spec)
    if annotations:
        doc["metadata"]["annotations"] = annotations
    config = buildconfigs.parse(doc)
    build = requests.instantiate(
        config, request or requests.BuildRequest(), number=1, uid="build-uid",
        created=factories.T0,
    )  # fmt: skip
    return build


def options(**overrides: Any) -> jobs.JobOptions:
    values: dict[str, Any] = {
        "namespace": "triggerd",
        "image": "registry.example.com/triggerd:1",
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "4Gi"},
    }
    values.update(overrides)
    return jobs.JobOptions(**values)


def render(build: Build, opts: jobs.JobOptions) -> tuple[dict[str, Any], Plan]:
    plan = buildah.render(build, jobs.plan_context(build, opts))
    return jobs.render_job(build, plan, opts), plan


def containers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = job["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


FULL_SPEC: dict[str, Any] = {
    "output": {
        "to": {"kind": "DockerImage", "name": "registry.example.com/team/app:latest"},
        "pushSecret": {"name": "push-creds"},
    },
    "source": {
        "type": "Git",
        "git": {"uri": "git@git.example.com:team/app.git", "ref": "main"},
        "sourceSecret": {"name": "git-ssh"},
    },
    "strategy": {
        "type": "Docker",
        "dockerStrategy": {
            "from": {"kind": "DockerImage", "name": "busybox:1.36"},
            "pullSecret": {"name": "pull-creds"},
        },
    },
    "nodeSelector": {"kubernetes.io/arch": "amd64"},
    "completionDeadlineSeconds": 900,
}


@pytest.mark.parametrize("full", [False, True], ids=["minimal", "secrets-and-selectors"])
@pytest.mark.parametrize("owner", [False, True], ids=["no-owner", "owned-by-build"])
def test_jobs_validate_strictly(full: bool, owner: bool) -> None:
    build = make_build(**(FULL_SPEC if full else {}))
    job, _ = render(build, options(owner_uid="cr-uid" if owner else ""))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert ("ownerReferences" in job["metadata"]) is owner


def test_security_settings() -> None:
    build = make_build(**FULL_SPEC)
    job, _ = render(build, options(seccomp_profile="profiles/buildah.json"))
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["ttlSecondsAfterFinished"] == 3600
    # an evicted pod ends the build (BuildPodEvicted): the Job fails, no second pod
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    by_name = containers(job)
    fetch = by_name["fetch"]["securityContext"]
    assert fetch["runAsNonRoot"] is True and fetch["runAsUser"] != 0
    assert fetch["capabilities"] == {"drop": ["ALL"]}
    assert fetch["allowPrivilegeEscalation"] is False
    build_ctx = by_name["build"]["securityContext"]
    assert build_ctx["runAsUser"] == 0
    assert build_ctx["capabilities"] == {
        "drop": ["ALL"],
        "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "SETFCAP"],
    }
    assert build_ctx["allowPrivilegeEscalation"] is False
    assert build_ctx["readOnlyRootFilesystem"] is True
    assert build_ctx["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "profiles/buildah.json",
    }
    assert "privileged" not in build_ctx
    env = {e["name"]: e["value"] for e in by_name["build"]["env"]}
    assert env["BUILDAH_ISOLATION"] == "chroot"
    assert env["REGISTRY_AUTH_FILE"] == "/var/run/secrets/triggerd/push/config.json"
    for container in by_name.values():
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert "--result" in container["command"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["storage"]["emptyDir"]["sizeLimit"] == "20Gi"
    assert volumes["push-secret"]["secret"]["secretName"] == "push-creds"
    assert volumes["push-secret"]["secret"]["items"] == [
        {"key": ".dockerconfigjson", "path": "config.json"}
    ]
    push_mount = next(m for m in by_name["build"]["volumeMounts"] if m["name"] == "push-secret")
    assert push_mount["readOnly"] is True
    text = json.dumps(job)
    assert "docker.sock" not in text and "hostPath" not in text
    labels = job["metadata"]["labels"]
    assert labels["openshift.io/build.name"] == build.name
    assert labels["app.kubernetes.io/managed-by"] == "triggerd"


def test_apparmor_annotation_is_optional() -> None:
    job, _ = render(make_build(), options(apparmor_unconfined=True))
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/build"] == "unconfined"
    job, _ = render(make_build(), options())
    assert not any("apparmor" in k for k in job["spec"]["template"]["metadata"]["annotations"])


@pytest.mark.parametrize(
    ("allowed", "asked", "privileged"),
    [(False, False, False), (False, True, False), (True, False, False), (True, True, True)],
)
def test_privileged_needs_both_the_setting_and_the_buildconfig(
    allowed: bool, asked: bool, privileged: bool
) -> None:
    """The annotation is on the BuildConfig only: the Build inherits it from there."""
    annotations = {jobs.PRIVILEGED_ANNOTATION: "true"} if asked else None
    build = make_build(annotations=annotations)
    job, _ = render(build, options(allow_privileged=allowed))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    ctx = containers(job)["build"]["securityContext"]
    assert ctx.get("privileged", False) is privileged


@pytest.mark.parametrize("config_asks", [False, True], ids=["config-silent", "config-asks"])
@pytest.mark.parametrize("value", ["true", "false"])
def test_a_build_request_cannot_switch_privileged(config_asks: bool, value: str) -> None:
    """Any API caller (or webhook) can send a BuildRequest: its annotations neither ask for
    a privileged pod nor take it away from a config that asks."""
    request = requests.BuildRequest(annotations={jobs.PRIVILEGED_ANNOTATION: value, "x": "y"})
    annotations = {jobs.PRIVILEGED_ANNOTATION: "true"} if config_asks else None
    build = make_build(annotations=annotations, request=request)
    assert build.meta.annotations["x"] == "y"  # other annotations still come along
    job, _ = render(build, options(allow_privileged=True))
    assert containers(job)["build"]["securityContext"].get("privileged", False) is config_asks


def test_names_are_deterministic_short_dns_labels() -> None:
    name = jobs.name_job("ns", "app-1")
    assert name.startswith("ns-app-1-") and name.endswith("-build")
    assert name == jobs.name_job("ns", "app-1")
    long_name = "a" * 60 + ".b-1"
    name = jobs.name_job("ns", long_name)
    assert len(name) <= 63 and name == jobs.name_job("ns", long_name)
    assert name != jobs.name_job("other", long_name)
    assert all(c.isalnum() or c == "-" for c in name)
    assert jobs.label_value("x" * 80) != "x" * 80 and len(jobs.label_value("x" * 80)) <= 63


def test_same_build_names_in_two_namespaces_get_two_jobs_and_selectors() -> None:
    """Every build namespace's Jobs run in one namespace: team-a/app-1 and team-b/app-1
    must not share a Job, and each one's pods are selected by its own labels."""
    a = make_build(namespace="team-a")
    b = dataclasses.replace(
        make_build(namespace="team-b"),
        meta=dataclasses.replace(make_build(namespace="team-b").meta, uid="other-uid"),
    )
    job_a, _ = render(a, options())
    job_b, _ = render(b, options())
    assert job_a["metadata"]["name"] != job_b["metadata"]["name"]
    for job, build in ((job_a, a), (job_b, b)):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert labels[jobs.BUILD_NAMESPACE_LABEL] == build.namespace
        assert labels[jobs.BUILD_UID_LABEL] == build.meta.uid
        selector = jobs.pod_selector(build.namespace, build.name, build.meta.uid)
        wanted = dict(part.split("=", 1) for part in selector.split(","))
        assert wanted.items() <= labels.items()
    other = dict(part.split("=", 1) for part in jobs.pod_selector("team-b", "app-1").split(","))
    assert not other.items() <= job_a["spec"]["template"]["metadata"]["labels"].items()


def test_the_plan_is_split_between_init_and_build_containers() -> None:
    build = make_build(**FULL_SPEC)
    job, plan = render(build, options())
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    fetch = Plan.from_dict(json.loads(annotations[jobs.FETCH_PLAN_ANNOTATION]))
    rest = Plan.from_dict(json.loads(annotations[jobs.BUILD_PLAN_ANNOTATION]))
    assert {s.stage for s in fetch.steps} == {StageName.FETCH_INPUTS}
    assert fetch.image == "" and rest.image == plan.image
    argv = [a for s in fetch.steps if isinstance(s.action, Command) for a in s.action.argv]
    assert "fetch" in argv and "--depth=1" in argv
    # the build container re-reads the commit (labels need it) from the foreign-owned checkout
    first = rest.steps[0].action
    assert isinstance(first, Command) and first.capture is Capture.REVISION
    assert first.env["GIT_CONFIG_KEY_0"] == "safe.directory"
    non_fetch = [s for s in plan.steps if s.stage is not StageName.FETCH_INPUTS]
    assert list(rest.steps[1:]) == non_fetch
    for container in containers(job).values():
        paths = [p for p in container["command"] if p.startswith(jobs.PLAN_DIR)]
        assert len(paths) == 1


def test_no_secret_values_in_the_manifest() -> None:
    build = make_build(**FULL_SPEC)
    job, _ = render(build, options())
    assert "s3cr3t" not in json.dumps(job)


def test_truncated_termination_message_still_yields_the_digest() -> None:
    digest = "sha256:" + "cd" * 32
    full = json.dumps(
        {"succeeded": True, "outputs": {"image.digest": digest}, "logSnippet": "x" * 5000}
    )
    result = jobs.parse_termination_message(full[:4096])
    assert result.succeeded and result.outputs["image.digest"] == digest
    pod = {
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "build",
                 "state": {"terminated": {"exitCode": 0, "message": full[:4096]}}}
            ],
        }
    }  # fmt: skip
    view = jobs.read_pod(pod, image="r/x:1", deadline_seconds=10)
    assert view.outcome is not None and getattr(view.outcome, "digest", "") == digest


def test_unknown_failure_reason_falls_back_to_generic() -> None:
    message = json.dumps({"succeeded": False, "reason": "SomethingNew", "message": "m"})
    pod = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "build", "state": {"terminated": {"exitCode": 1, "message": message}}}
            ],
        }
    }
    view = jobs.read_pod(pod, image="", deadline_seconds=10)
    assert getattr(view.outcome, "reason", None) is Reason.GENERIC_BUILD_FAILED


# Build inputs: source secrets/configMaps, dockerStrategy volumes, custom secrets -------------

INPUTS_SPEC: dict[str, Any] = {
    "source": {
        "type": "Git",
        "git": {"uri": "https://git.example.com/team/app.git", "ref": "main"},
        "sourceSecret": {"name": "git-basic"},
        "secrets": [{"secret": {"name": "npmrc"}, "destinationDir": "creds"}],
        "configMaps": [{"configMap": {"name": "settings"}, "destinationDir": "conf"}],
    },
    "strategy": {
        "type": "Docker",
        "dockerStrategy": {
            "volumes": [
                {"name": "token", "source": {"type": "Secret", "secret": {"secretName": "tok"}},
                 "mounts": [{"destinationPath": "/run/token"}]},
                {"name": "ca", "source": {"type": "ConfigMap", "configMap": {"name": "ca"}},
                 "mounts": [{"destinationPath": "/etc/pki/extra"}]},
            ]
        },
    },
}  # fmt: skip


def mounts_of(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"] if m.get("readOnly")}


def test_inputs_are_mounted_where_the_plans_use_them() -> None:
    build = make_build(**INPUTS_SPEC)
    job, plan = render(build, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    by_name = containers(job)
    fetch, build_mounts = mounts_of(by_name["fetch"]), mounts_of(by_name["build"])
    secrets, config_maps = jobs.INPUT_SECRETS_DIR, jobs.INPUT_CONFIG_MAPS_DIR
    # Copied into the context by the init container's plan (as the host plan copies them).
    assert f"{secrets}/npmrc" in fetch and f"{config_maps}/settings" in fetch
    assert f"{secrets}/npmrc" not in build_mounts
    # dockerStrategy.volumes are buildah --volume mounts: the build container's.
    assert f"{secrets}/tok" in build_mounts and f"{config_maps}/ca" in build_mounts
    assert f"{secrets}/tok" not in fetch
    for path, volume_name in {**fetch, **build_mounts}.items():
        if path.startswith((secrets, config_maps)):
            volume = volumes[volume_name]
            source = volume.get("secret") or volume["configMap"]
            assert source.get("secretName", source.get("name")) == path.rsplit("/", 1)[1]
            assert source["defaultMode"] == 0o444 and "items" not in source
    # The plan's copies and mounts point at those volumes.
    copies = {
        (s.action.source, s.action.destination)
        for s in plan.steps
        if isinstance(s.action, CopyInto)
    }
    assert copies == {
        (f"{secrets}/npmrc", "source/creds"),
        (f"{config_maps}/settings", "source/conf"),
    }
    build_argv = [a for s in plan.steps if isinstance(s.action, Command) for a in s.action.argv]
    assert f"{secrets}/tok:/run/token:ro" in build_argv
    assert f"{config_maps}/ca:/etc/pki/extra:ro" in build_argv
    assert "s3cr3t" not in json.dumps(job)


def test_basic_auth_source_secret_is_mounted_whole_for_the_credential_helper() -> None:
    build = make_build(**INPUTS_SPEC)
    job, plan = render(build, options())
    volume = next(
        v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "source-secret"
    )
    # No items list: a basic-auth secret has no ssh-privatekey, which would block the pod.
    assert volume["secret"] == {"secretName": "git-basic", "defaultMode": 0o440}
    assert mounts_of(containers(job)["fetch"])[jobs.SOURCE_SECRET_DIR] == "source-secret"
    assert jobs.SOURCE_SECRET_DIR not in mounts_of(containers(job)["build"])
    fetch_env = next(
        s.action.env for s in plan.steps
        if isinstance(s.action, Command) and "fetch" in s.action.argv
    )  # fmt: skip
    count = int(str(fetch_env["GIT_CONFIG_COUNT"]))
    helpers = [
        fetch_env[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(count)
        if fetch_env[f"GIT_CONFIG_KEY_{i}"] == "credential.helper"
    ]
    # The empty helper first drops any the host configures; then the mounted secret's.
    assert helpers == ["", jobs.git_credential_helper(jobs.SOURCE_SECRET_DIR)]
    assert jobs.SOURCE_SECRET_DIR in str(fetch_env["GIT_SSH_COMMAND"])


def test_source_strategy_secrets_and_custom_secrets_go_to_the_build_container() -> None:
    s2i = make_build(
        source=INPUTS_SPEC["source"],
        strategy={"type": "Source",
                  "sourceStrategy": {"from": {"kind": "DockerImage", "name": "s2i/python:3"}}},
    )  # fmt: skip
    job, _ = render(s2i, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    secret_dir = f"{jobs.INPUT_SECRETS_DIR}/npmrc"
    # Source strategy: mounted for assemble only, never copied into the context.
    assert secret_dir in mounts_of(containers(job)["build"])
    assert secret_dir not in mounts_of(containers(job)["fetch"])
    custom = make_build(
        strategy={"type": "Custom", "customStrategy": {
            "from": {"kind": "DockerImage", "name": "builder:1"},
            "secrets": [{"secretSource": {"name": "deploy-key"}, "mountPath": "/var/run/key"}],
        }},
    )  # fmt: skip
    job, plan = render(custom, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert f"{jobs.INPUT_SECRETS_DIR}/deploy-key" in mounts_of(containers(job)["build"])
    run = next(s.action for s in plan.steps if isinstance(s.action, RunInImage))
    assert (f"{jobs.INPUT_SECRETS_DIR}/deploy-key", "/var/run/key") in run.mounts


def test_git_credential_helper_answers_from_the_mounted_files(tmp_path: Any) -> None:
    """git itself runs the helper: basic-auth files answer, an ssh-auth secret does not."""
    import subprocess

    def fill(directory: str) -> str:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_COUNT": "1",
               "GIT_CONFIG_KEY_0": "credential.helper",
               "GIT_CONFIG_VALUE_0": jobs.git_credential_helper(directory)}  # fmt: skip
        done = subprocess.run(
            ["git", "credential", "fill"], input="protocol=https\nhost=git.example.com\n\n",
            env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return done.stdout

    basic = tmp_path / "basic"
    basic.mkdir()
    (basic / "username").write_text("robot")
    (basic / "password").write_text("p@ss word")
    assert "username=robot\npassword=p@ss word\n" in fill(str(basic))
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    (ssh / "ssh-privatekey").write_text("key")
    assert "password=" not in fill(str(ssh))


def test_source_images_pull_secrets_are_mounted_for_their_pulls() -> None:
    source = {
        "type": "Git",
        "git": {"uri": "https://git.example.com/team/app.git", "ref": "main"},
        "images": [
            {
                "from": {"kind": "DockerImage", "name": "registry.example.com/private/tools:1"},
                "pullSecret": {"name": "private-pull"},
                "paths": [{"sourcePath": "/bin/tool", "destinationDir": "bin"}],
            }
        ],
    }
    job, plan = render(make_build(source=source), options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    directory = f"{jobs.IMAGE_PULL_SECRETS_DIR}/private-pull"
    assert mounts_of(containers(job)["build"])[directory] == "image-pull-0"
    assert directory not in mounts_of(containers(job)["fetch"])
    volume = next(
        v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "image-pull-0"
    )
    assert volume["secret"]["secretName"] == "private-pull"
    assert volume["secret"]["items"] == [{"key": ".dockerconfigjson", "path": jobs.AUTH_FILE}]
    pull = next(
        s.action for s in plan.steps if isinstance(s.action, Command) and "pull" in s.action.argv
    )
    assert f"{directory}/{jobs.AUTH_FILE}" in pull.argv


# spec.resources -------------------------------------------------------------------------------


def test_the_builds_resources_go_to_the_build_container_over_the_settings() -> None:
    build = make_build(
        resources={"requests": {"cpu": "2"}, "limits": {"cpu": "4", "nvidia.com/gpu": 1}}
    )
    job, _ = render(build, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert containers(job)["build"]["resources"] == {
        "requests": {"cpu": "2", "memory": "1Gi"},  # memory: the settings' default
        "limits": {"memory": "4Gi", "cpu": "4", "nvidia.com/gpu": "1"},
    }
    # the init container keeps the settings' defaults
    assert containers(job)["fetch"]["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "4Gi"},
    }


def test_defaults_give_way_where_they_would_contradict_the_build() -> None:
    """A build asking for 8Gi under a 4Gi default limit gets an 8Gi limit (the API would
    refuse request > limit); a build limiting memory to 512Mi under a 1Gi default request
    gets a 512Mi request."""
    more = make_build(resources={"requests": {"memory": "8Gi"}})
    job, _ = render(more, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert containers(job)["build"]["resources"]["limits"]["memory"] == "8Gi"
    less = make_build(resources={"limits": {"memory": "512Mi"}})
    job, _ = render(less, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert containers(job)["build"]["resources"]["requests"]["memory"] == "512Mi"
    assert containers(job)["build"]["resources"]["limits"]["memory"] == "512Mi"


def test_the_fetch_user_is_the_images_own() -> None:
    """The image (Dockerfile) has uid 10001 only: OpenSSH refuses a uid without a passwd
    entry ("No user exists for uid ...")."""
    from triggerd.kube import KubernetesSettings

    assert (
        KubernetesSettings().fetch_uid
        == 10001
        == jobs.JobOptions(namespace="n", image="i").fetch_uid
    )
    job, _ = render(make_build(), options())
    assert containers(job)["fetch"]["securityContext"]["runAsUser"] == 10001
    assert job["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001


# The registry layer cache ----------------------------------------------------------------------


def build_argv(plan: Plan) -> tuple[Any, ...]:
    return next(
        s.action.argv
        for s in plan.steps
        if isinstance(s.action, Command) and "build" in s.action.argv[:8]
    )


def test_the_layer_cache_repository_comes_from_the_setting_or_the_config() -> None:
    _, plan = render(make_build(), options(layer_cache_registry="cache.example.com/layers"))
    argv = build_argv(plan)
    repository = "cache.example.com/layers/triggerd/app"
    assert argv[argv.index("--cache-from") + 1] == repository
    assert argv[argv.index("--cache-to") + 1] == repository
    annotations = {buildconfigs.CACHE_ANNOTATION: "registry.example.com/team/app-cache"}
    _, plan = render(make_build(annotations=annotations), options(layer_cache_registry="x.io"))
    argv = build_argv(plan)
    assert argv[argv.index("--cache-to") + 1] == "registry.example.com/team/app-cache"
    off = make_build(annotations={buildconfigs.CACHE_ANNOTATION: "none"})
    _, plan = render(off, options(layer_cache_registry="cache.example.com/layers"))
    assert "--cache-to" not in build_argv(plan)
    _, plan = render(make_build(), options())
    assert "--cache-to" not in build_argv(plan)
    with pytest.raises(buildah.Unplannable, match="not a tag"):
        render(
            make_build(annotations={buildconfigs.CACHE_ANNOTATION: "r.example.com/c:v1"}), options()
        )


def test_the_cache_is_pushed_with_the_push_secret_not_the_pull_secret() -> None:
    """buildah build takes one --authfile for its pulls and its --cache-to push: with a
    pull secret that file would push the cache with pull credentials. The build pod's plan
    merges the two — the host executor's MergeAuthFiles step, the one mechanism: the pull
    secret's auths, and the push secret's entry under the cache repository's key."""
    build = make_build(**FULL_SPEC)  # a pull secret and a push secret
    job, plan = render(build, options(layer_cache_registry="registry.example.com/cache"))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    build_plan = Plan.from_dict(json.loads(annotations[jobs.BUILD_PLAN_ANNOTATION]))
    argv = build_argv(build_plan)
    assert argv[argv.index("--authfile") + 1] == InWorkspace(path=buildah.BUILD_AUTH_FILE)
    index = next(i for i, s in enumerate(build_plan.steps)
                 if isinstance(s.action, Command) and s.action.argv == argv)  # fmt: skip
    merge = build_plan.steps[index - 1].action
    assert merge == MergeAuthFiles(
        output=buildah.BUILD_AUTH_FILE,
        files=(f"{jobs.PULL_SECRET_DIR}/{jobs.AUTH_FILE}",),
        scoped=((f"{jobs.PUSH_SECRET_DIR}/{jobs.AUTH_FILE}",
                 "registry.example.com/cache/triggerd/app"),),
    )  # fmt: skip
    # Exactly one merge, in the build container's plan (the fetch plan has no credentials).
    assert [type(s.action) for s in build_plan.steps].count(MergeAuthFiles) == 1
    assert not any(isinstance(s.action, Command) and s.action.argv[:1] == ("python",)
                   for s in build_plan.steps)  # fmt: skip
    # the fallback (the same build without the cache) pulls with the same merged file: the
    # pull secret's auths, the push credentials only under the unused cache repository
    command = build_plan.steps[index].action
    assert isinstance(command, Command) and "--cache-to" not in command.fallback
    assert command.fallback[command.fallback.index("--authfile") + 1] == InWorkspace(
        path=buildah.BUILD_AUTH_FILE
    )
    # without a pull secret the push secret (REGISTRY_AUTH_FILE) serves both already
    plain = make_build(output=FULL_SPEC["output"])
    _, plan = render(plain, options(layer_cache_registry="registry.example.com/cache"))
    assert "--authfile" not in build_argv(plan)
    assert not any(isinstance(s.action, MergeAuthFiles) for s in plan.steps)


SOURCE_STRATEGY: dict[str, Any] = {
    "type": "Source",
    "sourceStrategy": {
        "from": {"kind": "DockerImage", "name": "registry.example.com/s2i/python:3"},
        "pullSecret": {"name": "builder-pull"},
    },
}
CUSTOM_STRATEGY: dict[str, Any] = {
    "type": "Custom",
    "customStrategy": {
        "from": {"kind": "DockerImage", "name": "registry.example.com/builders/custom:1"},
        "pullSecret": {"name": "builder-pull"},
    },
}


@pytest.mark.parametrize("strategy", [SOURCE_STRATEGY, CUSTOM_STRATEGY], ids=["source", "custom"])
def test_source_and_custom_builder_images_are_pulled_with_their_pull_secret(
    strategy: dict[str, Any],
) -> None:
    build = make_build(strategy=strategy, output=FULL_SPEC["output"])
    job, plan = render(build, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pull_file = f"{jobs.PULL_SECRET_DIR}/{jobs.AUTH_FILE}"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["pull-secret"]["secret"]["secretName"] == "builder-pull"
    assert mounts_of(containers(job)["build"])[jobs.PULL_SECRET_DIR] == "pull-secret"
    assert jobs.PULL_SECRET_DIR not in mounts_of(containers(job)["fetch"])
    builder = strategy[next(k for k in strategy if k != "type")]["from"]["name"]
    [pull] = [s.action.argv for s in plan.steps
              if isinstance(s.action, Command) and "pull" in s.action.argv]  # fmt: skip
    assert pull[-1] == builder and pull[pull.index("--authfile") + 1] == pull_file
    if strategy is CUSTOM_STRATEGY:
        # and handed to the custom builder as OpenShift does (PULL_DOCKERCFG_PATH)
        run = next(s.action for s in plan.steps if isinstance(s.action, RunInImage))
        assert (pull_file, f"{buildah.PULL_DOCKERCFG_DIR}/.dockerconfigjson") in run.mounts
        assert ("PULL_DOCKERCFG_PATH", buildah.PULL_DOCKERCFG_DIR) in run.env


def test_a_custom_build_gets_its_source_secret() -> None:
    """A custom builder fetches by itself: the source secret is mounted into the build
    container for it (SOURCE_SECRET_PATH), not into the init container, which fetches
    nothing for it; before, such a Job was refused as "source secret … was not provided"."""
    build = make_build(
        source={"type": "Git", "git": {"uri": "git@git.example.com:team/app.git"},
                "sourceSecret": {"name": "git-ssh"}},
        strategy=CUSTOM_STRATEGY,
    )  # fmt: skip
    job, plan = render(build, options())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    directory = f"{jobs.INPUT_SECRETS_DIR}/git-ssh"
    build_mounts, fetch = mounts_of(containers(job)["build"]), mounts_of(containers(job)["fetch"])
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes[build_mounts[directory]]["secret"]["secretName"] == "git-ssh"
    assert directory not in fetch and jobs.SOURCE_SECRET_DIR not in fetch
    assert "source-secret" not in volumes
    run = next(s.action for s in plan.steps if isinstance(s.action, RunInImage))
    assert (directory, buildah.SOURCE_SECRET_DIR) in run.mounts
    assert ("SOURCE_SECRET_PATH", buildah.SOURCE_SECRET_DIR) in run.env


# Reading pods and Jobs --------------------------------------------------------------------------


def pod_with(*, build: dict[str, Any] | None = None, fetch: dict[str, Any] | None = None,
             deleting: bool = False, **status: Any) -> dict[str, Any]:  # fmt: skip
    doc: dict[str, Any] = {"metadata": {"name": "p"}, "status": dict(status)}
    if deleting:
        doc["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if build is not None:
        doc["status"]["containerStatuses"] = [{"name": "build", "state": build}]
    if fetch is not None:
        doc["status"]["initContainerStatuses"] = [{"name": "fetch", "state": fetch}]
    return doc


STOPPED = json.dumps({"succeeded": False, "stopped": "Cancelled"})
DONE = {"terminated": {"exitCode": 0, "message": json.dumps({"succeeded": True})}}


@pytest.mark.parametrize(
    "pod",
    [
        pod_with(build={"terminated": {"exitCode": 3, "message": STOPPED}}, phase="Failed"),
        pod_with(fetch={"terminated": {"exitCode": 3, "message": STOPPED}}, phase="Failed"),
        pod_with(build={"terminated": {"exitCode": 143, "message": ""}}),
        pod_with(build={"terminated": {"exitCode": 137, "reason": "Error", "message": "log"}}),
        pod_with(build={"running": {}}, deleting=True),
        pod_with(phase="Failed", reason="UnexpectedAdmissionError"),
    ],
    ids=["runner-got-sigterm", "init-got-sigterm", "sigterm", "sigkill", "deleting", "failed"],
)
def test_a_pod_stopped_from_outside_waits_for_its_job_to_say_why(pod: dict[str, Any]) -> None:
    """Not GenericBuildFailed: the Job says whether it was the deadline, an eviction or a
    deletion (explain_stop)."""
    view = jobs.read_pod(pod, image="r/x:1", deadline_seconds=60)
    assert view.outcome is None and view.stopped


@pytest.mark.parametrize(
    "pod",
    [
        pod_with(phase="Failed", reason="Evicted", message="low on ephemeral-storage",
                 build={"terminated": {"exitCode": 137, "message": ""}}),
        pod_with(deleting=True, build={"running": {}}, conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
             "message": "Eviction API: evicting"}]),
        pod_with(build={"terminated": {"exitCode": 3, "message": STOPPED}}, conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]),
    ],
    ids=["kubelet", "drain", "preempted"],
)  # fmt: skip
def test_a_disrupted_pod_is_evicted_whatever_its_containers_show(pod: dict[str, Any]) -> None:
    view = jobs.read_pod(pod, image="r/x:1", deadline_seconds=60)
    assert isinstance(view.outcome, Failed)
    assert view.outcome.reason is Reason.BUILD_POD_EVICTED


def test_a_pod_that_finished_before_its_deletion_succeeded() -> None:
    view = jobs.read_pod(pod_with(build=DONE, deleting=True), image="r/x:1", deadline_seconds=9)
    assert isinstance(view.outcome, Succeeded)


def job_with(*conditions: tuple[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "spec": dict(spec),
        "status": {
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": t, "status": "True", "reason": r} for t, r in conditions],
        },
    }


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (job_with(("Failed", "DeadlineExceeded")), Reason.EXCEEDED_RETRY_TIMEOUT),
        (job_with(("FailureTarget", "DeadlineExceeded")), Reason.EXCEEDED_RETRY_TIMEOUT),
        (job_with(("Failed", "PodFailurePolicy")), Reason.BUILD_POD_EVICTED),
        (job_with(("Failed", "BackoffLimitExceeded")), Reason.BUILD_POD_DELETED),
        (None, Reason.BUILD_POD_DELETED),
        (job_with(activeDeadlineSeconds=60), Reason.EXCEEDED_RETRY_TIMEOUT),  # past: says it
    ],
    ids=["deadline", "deadline-target", "evicted", "deleted", "job-gone", "past-deadline"],
)
def test_the_job_explains_a_stopped_pod(job: dict[str, Any] | None, reason: Reason) -> None:
    outcome = jobs.explain_stop(
        job, deadline_seconds=60, cancelled=False, now=datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    )
    assert isinstance(outcome, Failed) and outcome.reason is reason


def test_a_job_that_says_nothing_yet_explains_nothing() -> None:
    early = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    running = job_with(activeDeadlineSeconds=60)
    assert jobs.explain_stop(running, deadline_seconds=60, cancelled=False, now=early) is None
    assert jobs.explain_stop(None, deadline_seconds=60, cancelled=True, now=early) == Cancelled()


def test_an_image_stream_tag_output_is_pushed_to_the_image_stream_registry() -> None:
    build = make_build(
        output={"to": {"kind": "ImageStreamTag", "name": "app:v2"}},
    )
    with pytest.raises(buildah.Unplannable, match="imageStreamRegistry"):
        render(build, options())
    job, plan = render(build, options(image_stream_registry="streams.example.com"))
    pushes = [
        s.action.argv
        for s in plan.steps
        if isinstance(s.action, Command) and "push" in s.action.argv[:8]
    ]
    assert pushes and "streams.example.com/triggerd/app:v2" in " ".join(map(str, pushes[0]))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
