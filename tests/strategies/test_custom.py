"""Custom strategy end to end: the builder image runs (entrypoint + CMD) with OpenShift's
build environment, its env and secrets; a failing builder fails the build; the Docker
socket is refused with a clear reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from triggerd.executors.base import Failed, Succeeded
from triggerd.model.builds import Reason
from triggerd.settings import SecretSettings

pytestmark = pytest.mark.e2e

SECRET_TOKEN = "s3cret-token-value"


def custom_spec(builder: str, output: str, **custom: Any) -> dict[str, Any]:
    return {
        "source": {"type": "Git", "git": {"uri": "https://git.example.com/app.git", "ref": "dev"}},
        "strategy": {
            "type": "Custom",
            "customStrategy": {"from": {"kind": "DockerImage", "name": builder}, **custom},
        },
        "output": {
            "to": {"kind": "DockerImage", "name": output},
            "pushSecret": {"name": "push"},
        },
    }


def settings_secrets() -> dict[str, SecretSettings]:
    return {
        "push": SecretSettings(data={".dockerconfigjson": json.dumps({"auths": {}})}),
        "custom-secret": SecretSettings(data={"token": SECRET_TOKEN}),
    }


async def test_custom_builder_gets_the_build_environment(
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
    executor = env.executor(env.settings(secrets=settings_secrets()))
    outcome = await executor.run(make_build(spec, "custom-1"), RecordingReporter())
    log = env.logs.read("team", "custom-1").decode()
    assert isinstance(outcome, Succeeded), log
    registry = output.split("/")[0]
    assert f"custom: OUTPUT_IMAGE={output} OUTPUT_REGISTRY={registry}" in log
    assert (
        "custom: SOURCE_URI=https://git.example.com/app.git SOURCE_REF=dev EXTRA=from-config" in log
    )
    assert 'custom: BUILD has "kind":"Build"' in log
    assert "custom: push config present" in log
    # The secret reached the builder through the mount, and only there: never the log's
    # step descriptions (the builder itself chose to print it here).
    assert f"custom: secret={SECRET_TOKEN}" in log
    assert log.count(SECRET_TOKEN) == 1


async def test_failing_custom_builder_fails_the_build(
    env: ExecutorEnv, custom_builder_image: str
) -> None:
    output = env.registry.ref("strategies/custom-fail", "v1")
    spec = custom_spec(custom_builder_image, output, env=[{"name": "CUSTOM_EXIT", "value": "3"}])
    executor = env.executor(env.settings(secrets=settings_secrets()))
    outcome = await executor.run(make_build(spec, "custom-fail-1"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.GENERIC_BUILD_FAILED
    assert "exited with status 3" in outcome.message


async def test_expose_docker_socket_is_refused(env: ExecutorEnv, custom_builder_image: str) -> None:
    output = env.registry.ref("strategies/custom-docker", "v1")
    spec = custom_spec(custom_builder_image, output, exposeDockerSocket=True)
    executor = env.executor(env.settings(secrets=settings_secrets()))
    outcome = await executor.run(make_build(spec, "custom-sock-1"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert "exposeDockerSocket is not supported" in outcome.message
