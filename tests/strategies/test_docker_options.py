"""dockerStrategy.volumes and imageOptimizationPolicy end to end: secrets and config maps
mounted read-only into RUN steps and absent from the image; SkipLayers commits the new
layers as one."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from tests.strategies.images import layer_files
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
