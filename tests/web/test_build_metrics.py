"""Build metrics: finished builds counted by phase, reason and strategy, and their durations
observed, as /metrics shows them."""

from __future__ import annotations

import re

from tests.web.conftest import NS, Env
from tests.web.test_builds import wait_phase
from triggerd import metrics
from triggerd.model.builds import Reason


def builds_counted(phase: str, reason: str, strategy: str = "Docker") -> float:
    labels = {"phase": phase, "reason": reason, "strategy": strategy}
    return metrics.REGISTRY.get_sample_value("triggerd_builds_total", labels) or 0.0


def durations_observed(phase: str, strategy: str = "Docker") -> float:
    labels = {"phase": phase, "strategy": strategy}
    value = metrics.REGISTRY.get_sample_value("triggerd_build_duration_seconds_count", labels)
    return value or 0.0


async def test_finished_builds_are_counted_with_phase_reason_strategy_and_duration(
    env: Env,
) -> None:
    # The registry is the process's own, shared by every test: compare before and after.
    complete, failed = (
        builds_counted("Complete", ""),
        builds_counted("Failed", Reason.DOCKER_BUILD_FAILED.value),
    )
    complete_durations, failed_durations = (
        durations_observed("Complete"),
        durations_observed("Failed"),
    )
    await env.create_bc()
    first = (await env.start())["metadata"]["name"]
    await env.executor.wait_started(NS, first)
    env.executor.finish(NS, first)
    await wait_phase(env, first, "Complete")
    second = (await env.start())["metadata"]["name"]
    await env.executor.wait_started(NS, second)
    env.executor.fail(NS, second)
    await wait_phase(env, second, "Failed")

    assert builds_counted("Complete", "") == complete + 1
    assert builds_counted("Failed", Reason.DOCKER_BUILD_FAILED.value) == failed + 1
    assert durations_observed("Complete") == complete_durations + 1
    assert durations_observed("Failed") == failed_durations + 1
    text = await (await env.client.get("/metrics")).text()
    assert re.search(
        r'triggerd_builds_total\{phase="Failed",reason="DockerBuildFailed",strategy="Docker"\}',
        text,
    ), text
    assert (
        'triggerd_build_duration_seconds_bucket{le="1.0",phase="Complete",strategy="Docker"}'
        in text
    )
    # Build names never become label values.
    assert first not in text and second not in text
