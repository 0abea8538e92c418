"""Plans for the Custom strategy, binary, image, secret and config map inputs, Docker
volumes, imageOptimizationPolicy and the registry layer cache (pure): the steps rendered,
and every plan surviving the JSON round trip a Kubernetes Job relies on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.planning.test_buildah import make_build
from triggerd.model.builds import Reason, StageName
from triggerd.planning import archives, buildah
from triggerd.planning.buildah import PlanContext, Unplannable
from triggerd.planning.plan import (
    Command,
    CopyFromImage,
    CopyInto,
    ExtractArchive,
    InWorkspace,
    OutputName,
    Plan,
    RunInImage,
    resolve,
)

IMAGE = "registry.example.com/team/app:v1"
BASE = "registry.example.com/base:1"


def docker(**docker_strategy: Any) -> dict[str, Any]:
    return {
        "source": {"type": "Git", "git": {"uri": "https://git.example.com/app.git"}},
        "strategy": {"type": "Docker", "dockerStrategy": docker_strategy},
        "output": {"to": {"kind": "DockerImage", "name": IMAGE}},
    }


def roundtrip(plan: Plan) -> None:
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def build_command(plan: Plan) -> Command:
    builds = [c for c in plan.commands() if "build" in c.argv]
    assert len(builds) == 1
    return builds[0]


def test_custom_strategy_plan() -> None:
    spec = docker()
    spec["source"]["contextDir"] = "svc"
    spec["source"]["sourceSecret"] = {"name": "git"}
    spec["source"]["secrets"] = [{"secret": {"name": "in"}, "destinationDir": "x"}]
    spec["source"]["configMaps"] = [{"configMap": {"name": "cm"}}]
    spec["strategy"] = {
        "type": "Custom",
        "customStrategy": {
            "from": {"kind": "DockerImage", "name": BASE},
            "env": [{"name": "X", "value": "1"}],
            "secrets": [{"secretSource": {"name": "s"}, "mountPath": "/var/run/s"}],
            "pullSecret": {"name": "pull"},
        },
    }
    spec["output"]["pushSecret"] = {"name": "push"}
    ctx = PlanContext(
        push_auth_file="secrets/push-auth.json",
        pull_auth_file="secrets/pull-auth.json",
        secret_dirs={"s": "secrets/s", "git": "secrets/git", "in": "/mnt/in"},
        config_map_dirs={"cm": "secrets/cm"},
    )
    plan = buildah.render(make_build(spec), ctx)
    run = plan.steps[-1].action
    assert isinstance(run, RunInImage)
    assert run.default_command and run.image == BASE
    env = dict(run.env)
    # OpenShift's addOutputEnvVars: the registry and the rest of the reference apart.
    assert env["OUTPUT_IMAGE"] == "team/app:v1"
    assert env["OUTPUT_REGISTRY"] == "registry.example.com"
    assert env["SOURCE_URI"] == env["SOURCE_REPOSITORY"] == "https://git.example.com/app.git"
    assert env["SOURCE_CONTEXT_DIR"] == "svc"
    assert "SOURCE_REF" not in env  # no ref: unset, as OpenShift leaves it
    assert env["SOURCE_SECRET_PATH"] == buildah.SOURCE_SECRET_DIR
    assert env["PUSH_DOCKERCFG_PATH"] == buildah.PUSH_DOCKERCFG_DIR
    assert env["PULL_DOCKERCFG_PATH"] == buildah.PULL_DOCKERCFG_DIR
    assert env["LANG"] == "en_US.utf8"
    assert env["X"] == "1"
    assert json.loads(str(env["BUILD"]))["kind"] == "Build"
    assert set(run.mounts) == {
        (InWorkspace(path="secrets/s"), "/var/run/s"),
        (InWorkspace(path="secrets/git"), "/var/run/secrets/openshift.io/source"),
        (InWorkspace(path="secrets/push-auth.json"),
         "/var/run/secrets/openshift.io/push/.dockerconfigjson"),
        (InWorkspace(path="secrets/pull-auth.json"),
         "/var/run/secrets/openshift.io/pull/.dockerconfigjson"),
        ("/mnt/in", "/var/run/secrets/openshift.io/build/in"),
        (InWorkspace(path="secrets/cm"), "/var/run/configs/openshift.io/build/cm"),
    }  # fmt: skip
    assert plan.stages == (StageName.FETCH_INPUTS, StageName.PULL_IMAGES, StageName.BUILD)
    roundtrip(plan)
    # With a ref it is set; Docker Hub output names keep their repository path.
    spec["source"]["git"]["ref"] = "dev"
    spec["output"]["to"]["name"] = "busybox:1"
    env = dict(_custom_run(buildah.render(make_build(spec), ctx)).env)
    assert env["SOURCE_REF"] == "dev"
    assert (env["OUTPUT_REGISTRY"], env["OUTPUT_IMAGE"]) == ("docker.io", "library/busybox:1")


def _custom_run(plan: Plan) -> RunInImage:
    run = plan.steps[-1].action
    assert isinstance(run, RunInImage)
    return run


def test_custom_strategy_refuses_the_docker_socket() -> None:
    spec = docker()
    spec["strategy"] = {
        "type": "Custom",
        "customStrategy": {"from": {"kind": "DockerImage", "name": BASE},
                           "exposeDockerSocket": True},
    }  # fmt: skip
    with pytest.raises(Unplannable, match="exposeDockerSocket is not supported"):
        buildah.render(make_build(spec), PlanContext())


def test_binary_plan_and_missing_upload() -> None:
    spec = docker()
    spec["source"] = {"type": "Binary", "binary": {"asFile": "app.jar"}}
    with pytest.raises(Unplannable, match="no upload") as refused:
        buildah.render(make_build(spec), PlanContext())
    assert refused.value.reason is Reason.FETCH_SOURCE_FAILED
    limits = archives.Limits(max_size=10, max_files=2)
    plan = buildah.render(
        make_build(spec),
        PlanContext(binary_input="/data/uploads/sha256/ab", binary_limits=limits),
    )
    extract = [s.action for s in plan.steps if isinstance(s.action, ExtractArchive)]
    assert extract == [
        ExtractArchive(archive="/data/uploads/sha256/ab", destination="source",
                       as_file="app.jar", max_size=10, max_files=2)
    ]  # fmt: skip
    roundtrip(plan)


def test_images_secrets_config_maps_volumes_and_cache() -> None:
    spec = docker(
        volumes=[
            {"name": "v", "source": {"type": "Secret", "secret": {"secretName": "s"}},
             "mounts": [{"destinationPath": "/run/v"}]},
        ],
    )  # fmt: skip
    spec["source"]["images"] = [
        {"from": {"kind": "DockerImage", "name": BASE},
         "paths": [{"sourcePath": "/opt/lib/.", "destinationDir": "lib"}]}
    ]  # fmt: skip
    spec["source"]["secrets"] = [{"secret": {"name": "s"}, "destinationDir": "creds"}]
    spec["source"]["configMaps"] = [{"configMap": {"name": "c"}}]
    ctx = PlanContext(
        secret_dirs={"s": "secrets/mounts/s"},
        config_map_dirs={"c": "secrets/configmaps/c"},
        cache_repository="cache.example.com/team/app",
    )
    plan = buildah.render(make_build(spec), ctx)
    copies = [s.action for s in plan.steps if isinstance(s.action, CopyInto)]
    assert [(c.source, c.destination) for c in copies] == [
        ("secrets/configmaps/c", "source"),
        ("secrets/mounts/s", "source/creds"),
    ]
    from_image = [s.action for s in plan.steps if isinstance(s.action, CopyFromImage)]
    assert from_image[0].paths == (("/opt/lib/.", "source/lib"),)
    command = build_command(plan)
    outputs = {OutputName.COMMIT: "c" * 40}
    argv = [resolve(a, "/ws", outputs) for a in command.argv]
    assert "/ws/secrets/mounts/s:/run/v:ro" in argv
    assert argv[-5:] == [
        "--cache-from", "cache.example.com/team/app",
        "--cache-to", "cache.example.com/team/app", "/ws/source",
    ]  # fmt: skip
    # Without the cache flags when the cache push fails.
    fallback = [resolve(a, "/ws", outputs) for a in command.fallback]
    assert "--cache-to" not in fallback and fallback[-1] == "/ws/source"
    assert command.fallback_marker == buildah.CACHE_PUSH_FAILED
    roundtrip(plan)


@pytest.mark.parametrize(
    ("policy", "flag"), [("None", "--layers"), ("SkipLayers", "--layers=false"),
                         ("SkipLayersAndWarn", "--layers=false")],
)  # fmt: skip
def test_image_optimization_policy(policy: str, flag: str) -> None:
    plan = buildah.render(make_build(docker(imageOptimizationPolicy=policy)), PlanContext())
    assert flag in build_command(plan).argv


def test_missing_volume_source_is_named() -> None:
    spec = docker(
        volumes=[{"name": "v", "source": {"type": "ConfigMap", "configMap": {"name": "cm"}},
                  "mounts": [{"destinationPath": "/etc/x"}]}]
    )  # fmt: skip
    with pytest.raises(Unplannable, match='ConfigMap "cm" of volume "v" was not provided'):
        buildah.render(make_build(spec), PlanContext())


@pytest.mark.parametrize("strategy", ["Docker", "Source", "Custom"])
def test_image_stream_tag_builders_for_every_strategy(strategy: str) -> None:
    """An ImageStreamTag ``from`` arrives resolved to a DockerImage (the image change
    runtime pins it in the BuildRequest); one that did not is read where triggerd pushes
    image streams. The same for every strategy and for source images."""
    key = {"Docker": "dockerStrategy", "Source": "sourceStrategy", "Custom": "customStrategy"}
    spec = docker()
    reference = {"kind": "ImageStreamTag", "name": "python:3.11", "namespace": "shared"}
    spec["strategy"] = {"type": strategy, key[strategy]: {"from": reference}}
    spec["source"]["images"] = [
        {"from": {"kind": "ImageStreamTag", "name": "tools:v1"},
         "paths": [{"sourcePath": "/bin/x", "destinationDir": "t"}]}
    ]  # fmt: skip
    with pytest.raises(Unplannable, match=r"from: ImageStreamTag .* was not resolved") as info:
        buildah.render(make_build(spec), PlanContext())
    assert info.value.reason is Reason.PULL_BUILDER_IMAGE_FAILED
    plan = buildah.render(make_build(spec), PlanContext(image_stream_registry="reg.lan:5000"))
    pulled = [c.argv[-1] for c in plan.commands() if "pull" in c.argv]
    assert "reg.lan:5000/shared/python:3.11" in pulled
    if strategy != "Custom":
        assert "reg.lan:5000/team/tools:v1" in pulled
    # Resolved (what a build of such a config carries): the pinned image, as named.
    pinned = "reg.lan:5000/shared/python@sha256:" + "a" * 64
    spec["strategy"][key[strategy]]["from"] = {"kind": "DockerImage", "name": pinned}
    plan = buildah.render(make_build(spec), PlanContext(image_stream_registry="reg.lan:5000"))
    assert pinned in [c.argv[-1] for c in plan.commands() if "pull" in c.argv]
