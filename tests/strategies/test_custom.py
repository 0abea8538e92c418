"""Custom strategy end to end: the builder image runs (entrypoint + CMD) with OpenShift's
build environment, its env, its secrets and the build's inputs, and pushes what it built;
a failing builder fails the build; the Docker socket is refused with a clear reason."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from tests.strategies.images import layer_files
from triggerd.executors.base import Failed, Succeeded
from triggerd.model.builds import Reason
from triggerd.settings import SecretSettings

pytestmark = pytest.mark.e2e

SECRET_TOKEN = "s3cret-token-value"


def custom_spec(builder: str, output: str, ref: str = "dev", **custom: Any) -> dict[str, Any]:
    return {
        "source": {
            "type": "Git",
            "git": {"uri": "https://git.example.com/app.git", "ref": ref},
            "contextDir": "svc",
        },
        "strategy": {
            "type": "Custom",
            "customStrategy": {"from": {"kind": "DockerImage", "name": builder}, **custom},
        },
        "output": {
            "to": {"kind": "DockerImage", "name": output},
            "pushSecret": {"name": "push"},
        },
    }


SOURCE_PASSWORD = "git-pa55word"
INPUT_SECRET = "input-secret-value"


def settings_secrets() -> dict[str, SecretSettings]:
    return {
        "push": SecretSettings(data={".dockerconfigjson": json.dumps({"auths": {}})}),
        "custom-secret": SecretSettings(data={"token": SECRET_TOKEN}),
        "git-basic": SecretSettings(data={"username": "bot", "password": SOURCE_PASSWORD}),
        "creds": SecretSettings(data={"token": INPUT_SECRET}),
    }


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def test_custom_builder_gets_the_build_environment_and_pushes(
    env: ExecutorEnv, custom_builder_image: str
) -> None:
    output = env.registry.ref("strategies/custom", "v1")
    spec = custom_spec(
        custom_builder_image,
        output,
        env=[{"name": "EXTRA", "value": "from-config"}],
        secrets=[
            {"secretSource": {"name": "custom-secret"}, "mountPath": "/var/run/custom-secret"}
        ],
    )
    spec["source"]["sourceSecret"] = {"name": "git-basic"}
    spec["source"]["secrets"] = [{"secret": {"name": "creds"}, "destinationDir": "x"}]
    spec["source"]["configMaps"] = [{"configMap": {"name": "app-config"}}]
    settings = dataclasses.replace(
        env.settings(secrets=settings_secrets()), config_maps={"app-config": {"level": "info"}}
    )
    outcome = await env.executor(settings).run(make_build(spec, "custom-1"), RecordingReporter())
    log = env.logs.read("team", "custom-1").decode()
    assert isinstance(outcome, Succeeded), log
    registry = output.split("/")[0]
    uri = "https://git.example.com/app.git"
    for name, value in [
        # OpenShift's addOutputEnvVars: the registry, and the rest of the reference.
        ("OUTPUT_REGISTRY", registry),
        ("OUTPUT_IMAGE", "strategies/custom:v1"),
        ("SOURCE_URI", uri),
        ("SOURCE_REPOSITORY", uri),
        ("SOURCE_REF", "dev"),
        ("SOURCE_CONTEXT_DIR", "svc"),
        ("SOURCE_SECRET_PATH", "/var/run/secrets/openshift.io/source"),
        ("PUSH_DOCKERCFG_PATH", "/var/run/secrets/openshift.io/push"),
        ("LANG", "en_US.utf8"),
        ("EXTRA", "from-config"),
    ]:
        assert f"custom: {name}={value}\n" in log, name
    assert 'custom: BUILD has "kind":"Build"' in log
    assert "custom: push config present" in log
    # Every input reached the builder through its mount (OpenShift's paths).
    for path, value in [
        ("/var/run/custom-secret/token", SECRET_TOKEN),
        ("/var/run/secrets/openshift.io/source/password", SOURCE_PASSWORD),
        ("/var/run/secrets/openshift.io/build/creds/token", INPUT_SECRET),
        ("/var/run/configs/openshift.io/build/app-config/level", "info"),
    ]:
        assert f"custom: read {path} sha256={sha(value)}" in log, path
    for value in (SECRET_TOKEN, SOURCE_PASSWORD, INPUT_SECRET):
        assert value not in log
    # The builder pushed to $OUTPUT_REGISTRY/$OUTPUT_IMAGE: where the BuildConfig says.
    assert f"custom: pushed {output}" in log
    files = layer_files(env.registry, "strategies/custom", "v1")
    built = [content for name, content in files.items() if name.endswith(":built.txt")]
    assert built == [f"built from {uri} dev svc\n".encode()]


async def test_failing_custom_builder_fails_the_build(
    env: ExecutorEnv, custom_builder_image: str
) -> None:
    output = env.registry.ref("strategies/custom-fail", "v1")
    spec = custom_spec(
        custom_builder_image, output, ref="", env=[{"name": "CUSTOM_EXIT", "value": "3"}]
    )
    executor = env.executor(env.settings(secrets=settings_secrets()))
    outcome = await executor.run(make_build(spec, "custom-fail-1"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.GENERIC_BUILD_FAILED
    assert "exited with status 3" in outcome.message
    # No ref: SOURCE_REF is not set at all (OpenShift sets it only when there is one).
    assert "custom: SOURCE_REF=<unset>" in env.logs.read("team", "custom-fail-1").decode()


async def test_expose_docker_socket_is_refused(env: ExecutorEnv, custom_builder_image: str) -> None:
    output = env.registry.ref("strategies/custom-docker", "v1")
    spec = custom_spec(custom_builder_image, output, exposeDockerSocket=True)
    executor = env.executor(env.settings(secrets=settings_secrets()))
    outcome = await executor.run(make_build(spec, "custom-sock-1"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert "exposeDockerSocket is not supported" in outcome.message
