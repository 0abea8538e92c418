"""dockerStrategy.volumes and imageOptimizationPolicy end to end: secrets and config maps
mounted read-only into RUN steps and absent from the image; SkipLayers commits the new
layers as one; OpenShift's build metadata and output.imageLabels in the image."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from tests.strategies.images import image_config, layer_files
from tests.support.buildah import BuildahEnv
from tests.support.gitrepo import GitRepoFactory
from triggerd.executors.base import Succeeded
from triggerd.settings import SecretSettings

pytestmark = pytest.mark.e2e

SECRET = "volume-secret-value-77"


def docker_spec(uri: str, output: str, **docker: Any) -> dict[str, Any]:
    return {
        "source": {"type": "Git", "git": {"uri": uri, "ref": "main"}},
        "strategy": {"type": "Docker", "dockerStrategy": docker},
        "output": {"to": {"kind": "DockerImage", "name": output}},
    }


async def test_volumes_are_mounted_read_only_into_run_steps(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory(
        "volumes",
        {
            "Dockerfile": f"FROM {env.base_image}\n"
            f'RUN test "$(wc -c < /run/build/token)" -eq {len(SECRET)}'
            " && cat /etc/build-config/level > /level"
            " && ! touch /run/build/token 2>/dev/null && echo read-only-ok\n",
        },
    )
    image = env.registry.ref("docker/volumes", "v1")
    volumes = [
        {"name": "creds", "source": {"type": "Secret", "secret": {"secretName": "creds"}},
         "mounts": [{"destinationPath": "/run/build"}]},
        {"name": "cfg", "source": {"type": "ConfigMap", "configMap": {"name": "cfg"}},
         "mounts": [{"destinationPath": "/etc/build-config"}]},
    ]  # fmt: skip
    base = env.settings(secrets={"creds": SecretSettings(data={"token": SECRET})})
    settings = dataclasses.replace(
        base,
        config_maps={"cfg": {"level": "info"}},
    )
    outcome = await env.executor(settings).run(
        make_build(docker_spec(repo.git_url, image, volumes=volumes), "volumes-1"),
        RecordingReporter(),
    )
    log = env.logs.read("team", "volumes-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert "read-only-ok" in log
    assert SECRET not in log
    files = layer_files(env.registry, "docker/volumes", "v1")
    assert any(name.endswith(":level") and content == b"info" for name, content in files.items())
    for name, content in files.items():
        assert SECRET.encode() not in content, name
        assert not name.endswith("token"), name


async def test_skip_layers_commits_one_new_layer(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory(
        "squash",
        {"Dockerfile": f"FROM {env.base_image}\nRUN echo a > /a\nRUN echo b > /b\nCOPY . /src\n"},
    )
    base_repo = env.base_image.split("/", 1)[1].rsplit(":", 1)[0]
    base_manifest = env.registry.manifest(base_repo, "latest")
    assert base_manifest is not None
    base_layers = len(base_manifest.json()["layers"])

    image = env.registry.ref("docker/squash", "v1")
    spec = docker_spec(repo.git_url, image, imageOptimizationPolicy="SkipLayers")
    outcome = await env.executor().run(make_build(spec, "squash-1"), RecordingReporter())
    log = env.logs.read("team", "squash-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert "--layers=false" in log
    manifest = env.registry.manifest("docker/squash", "v1")
    assert manifest is not None
    assert len(manifest.json()["layers"]) == base_layers + 1


async def test_docker_image_carries_openshift_build_metadata_and_image_labels(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, buildah_env: BuildahEnv
) -> None:
    """OpenShift appends OPENSHIFT_BUILD_* as ENV to Docker builds too, and the labels
    naming the build, its source and commit; output.imageLabels come last and win."""
    repo = git_repo_factory(
        "metadata", {"Dockerfile": f"FROM {env.base_image}\nENV OWN=kept\nRUN true\n"}
    )
    image = env.registry.ref("strategies/metadata", "v1")
    spec = docker_spec(repo.git_url, image, env=[{"name": "STRATEGY_ENV", "value": "1"}])
    spec["output"]["imageLabels"] = [
        {"name": "team", "value": "payments"},
        {"name": "io.openshift.build.commit.ref", "value": "overridden"},
    ]
    outcome = await env.executor().run(make_build(spec, "metadata-1"), RecordingReporter())
    log = env.logs.read("team", "metadata-1").decode()
    assert isinstance(outcome, Succeeded), log
    commit = repo.rev_parse("main")
    # What a user pulling the image sees (buildah inspect of the pushed image).
    pulled = buildah_env.run("pull", "--tls-verify=false", "-q", image).stdout.strip()
    config = json.loads(buildah_env.run("inspect", "--type", "image", pulled).stdout)["OCIv1"][
        "config"
    ]
    environment = config["Env"]
    for expected in [
        "OWN=kept",
        "STRATEGY_ENV=1",
        "OPENSHIFT_BUILD_NAME=metadata-1",
        "OPENSHIFT_BUILD_NAMESPACE=team",
        f"OPENSHIFT_BUILD_SOURCE={repo.git_url}",
        "OPENSHIFT_BUILD_REFERENCE=main",
        f"OPENSHIFT_BUILD_COMMIT={commit}",
    ]:
        assert expected in environment, (expected, environment)
    labels = config["Labels"]
    assert labels["team"] == "payments"
    assert labels["io.openshift.build.commit.ref"] == "overridden"
    assert labels["io.openshift.build.commit.id"] == commit
    assert labels["io.openshift.build.name"] == "metadata-1"
    assert labels["io.openshift.build.source-location"] == repo.git_url
    assert image_config(env.registry, "strategies/metadata", "v1")["Labels"] == labels
