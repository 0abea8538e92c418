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
    spec["strategy"] = {
        "type": "Custom",
        "customStrategy": {
            "from": {"kind": "DockerImage", "name": BASE},
            "env": [{"name": "X", "value": "1"}],
            "secrets": [{"secretSource": {"name": "s"}, "mountPath": "/var/run/s"}],
        },
    }
    spec["output"]["pushSecret"] = {"name": "push"}
    ctx = PlanContext(push_auth_file="secrets/push-auth.json", secret_dirs={"s": "secrets/s"})
    plan = buildah.render(make_build(spec), ctx)
    run = plan.steps[-1].action
    assert isinstance(run, RunInImage)
    assert run.default_command and run.image == BASE
    env = dict(run.env)
    assert env["OUTPUT_IMAGE"] == IMAGE
    assert env["OUTPUT_REGISTRY"] == "registry.example.com"
    assert env["SOURCE_URI"] == "https://git.example.com/app.git"
    assert env["PUSH_DOCKERCFG_PATH"] == buildah.PUSH_DOCKERCFG_DIR
    assert env["X"] == "1"
    assert json.loads(str(env["BUILD"]))["kind"] == "Build"
    assert (InWorkspace(path="secrets/s"), "/var/run/s") in run.mounts
    assert plan.stages == (StageName.FETCH_INPUTS, StageName.PULL_IMAGES, StageName.BUILD)
    roundtrip(plan)


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
    argv = [resolve(a, "/ws", {}) for a in command.argv]
    assert "/ws/secrets/mounts/s:/run/v:ro" in argv
    assert argv[-5:] == [
        "--cache-from", "cache.example.com/team/app",
        "--cache-to", "cache.example.com/team/app", "/ws/source",
    ]  # fmt: skip
    # Without the cache flags when the cache push fails.
    fallback = [resolve(a, "/ws", {}) for a in command.fallback]
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


def test_unresolved_image_stream_tag_builder_is_refused() -> None:
    spec = docker()
    spec["strategy"] = {
        "type": "Source",
        "sourceStrategy": {"from": {"kind": "ImageStreamTag", "name": "python:3.11"}},
    }
    with pytest.raises(Unplannable, match=r"sourceStrategy\.from: ImageStreamTag references"):
        buildah.render(make_build(spec), PlanContext())
