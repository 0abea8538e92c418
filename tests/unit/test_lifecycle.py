"""The Build phase machine: allowed moves, final terminal phases, timestamps."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.factories import T0, build
from triggerd import lifecycle
from triggerd.errors import Conflict
from triggerd.model.builds import Phase, Reason

ALL = list(Phase)


@pytest.mark.parametrize("source", ALL)
@pytest.mark.parametrize("target", ALL)
def test_transition_table(source: Phase, target: Phase) -> None:
    allowed = {
        (Phase.NEW, Phase.PENDING),
        (Phase.NEW, Phase.CANCELLED),
        (Phase.NEW, Phase.ERROR),
        (Phase.NEW, Phase.FAILED),
        (Phase.PENDING, Phase.RUNNING),
        (Phase.PENDING, Phase.COMPLETE),
        (Phase.PENDING, Phase.FAILED),
        (Phase.PENDING, Phase.ERROR),
        (Phase.PENDING, Phase.CANCELLED),
        (Phase.RUNNING, Phase.COMPLETE),
        (Phase.RUNNING, Phase.FAILED),
        (Phase.RUNNING, Phase.ERROR),
        (Phase.RUNNING, Phase.CANCELLED),
    }
    b = build(phase=source)
    if (source, target) in allowed:
        assert lifecycle.advance(b, target, now=T0).phase is target
    else:
        with pytest.raises(Conflict):
            lifecycle.advance(b, target, now=T0)


def test_timestamps_and_duration() -> None:
    b = build()
    b = lifecycle.advance(b, Phase.PENDING, now=T0)
    assert b.status.start_timestamp is None
    b = lifecycle.advance(b, Phase.RUNNING, now=T0 + timedelta(seconds=1))
    assert b.status.start_timestamp == T0 + timedelta(seconds=1)
    b = lifecycle.advance(
        b, Phase.FAILED, now=T0 + timedelta(seconds=4), reason=Reason.DOCKER_BUILD_FAILED
    )
    assert b.status.completion_timestamp == T0 + timedelta(seconds=4)
    assert b.status.duration_ns == 3_000_000_000
    assert b.status.reason == "DockerBuildFailed"
    assert b.status.message == "Docker build strategy has failed."
    doc = b.to_dict()["status"]
    assert doc["duration"] == 3_000_000_000
    assert doc["startTimestamp"].endswith("Z")


def test_cancel_of_queued_build_and_terminal_is_final() -> None:
    b = lifecycle.cancel(build(), now=T0)
    assert b.phase is Phase.CANCELLED and b.status.cancelled
    assert b.status.reason == "CancelledBuild"
    with pytest.raises(Conflict, match="final"):
        lifecycle.advance(b, Phase.RUNNING, now=T0)
    with pytest.raises(Conflict):
        lifecycle.request_cancel(b)


def test_snippet_keeps_last_non_empty_lines() -> None:
    text = "\n".join(f"line {i}" for i in range(30)) + "\n\n"
    snippet = lifecycle.snippet_of(text, 3)
    assert snippet == "line 27\nline 28\nline 29"
