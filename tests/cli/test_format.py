"""The oc-like table output of ``triggerd get`` (pure formatting, no server)."""

from __future__ import annotations

from datetime import UTC, datetime

from triggerd import cli
from triggerd.model import meta as metas

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def build(phase: str, **status: object) -> dict[str, object]:
    return {
        "metadata": {"name": "app-3"},
        "spec": {
            "source": {"type": "Git"},
            "strategy": {"type": "Docker"},
            "revision": {"git": {"commit": "0123456789abcdef"}},
        },
        "status": {"phase": phase, **status},
    }


def test_build_rows() -> None:
    done = build(
        "Failed",
        reason="DockerBuildFailed",
        startTimestamp="2026-01-01T11:57:00Z",
        duration=63 * 10**9,
    )
    assert cli.build_row(done, NOW) == [
        "app-3",
        "Docker",
        "Git@0123456",
        "Failed (DockerBuildFailed)",
        "3 minutes ago",
        "1m3s",
    ]
    assert cli.build_row(build("New"), NOW) == ["app-3", "Docker", "Git@0123456", "New", "", ""]
    running = build("Running", startTimestamp="2026-01-01T11:59:59Z")
    assert cli.build_row(running, NOW)[3:5] == ["Running", "1 second ago"]


def test_durations_and_ages() -> None:
    assert metas.format_duration(400_000_000) == "0s"
    assert metas.format_duration(3725 * 1_000_000_000) == "1h2m5s"
    assert cli._ago("2025-12-30T12:00:00Z", NOW) == "2 days ago"
    assert cli._ago("2026-01-01T11:00:00Z", NOW) == "1 hour ago"


def test_table_alignment() -> None:
    table = cli.format_table(["NAME", "LATEST"], [["a-long-name", "1"], ["b", "22"]])
    assert table.splitlines() == [
        "NAME          LATEST",
        "a-long-name   1",
        "b             22",
    ]
