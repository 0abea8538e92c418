"""Run policies and the global cap, table-tested against OpenShift's semantics."""

from __future__ import annotations

import pytest

from tests.factories import build
from triggerd import scheduling
from triggerd.model.builds import Build
from triggerd.model.builds import Phase as P


def names(builds: tuple[Build, ...]) -> list[str]:
    return [b.name for b in builds]


S, SLO, PAR = "Serial", "SerialLatestOnly", "Parallel"

CASES = [
    # (description, [(number, phase, policy)], cap, expected start, expected cancel)
    ("serial: oldest queued starts", [(1, P.NEW, S), (2, P.NEW, S)], 5, ["app-1"], []),
    ("serial: waits for running", [(1, P.RUNNING, S), (2, P.NEW, S)], 5, [], []),
    ("serial: waits for pending", [(1, P.PENDING, S), (2, P.NEW, S)], 5, [], []),
    ("serial: next after finished", [(1, P.COMPLETE, S), (2, P.NEW, S)], 5, ["app-2"], []),
    (
        "serial: after failure too",
        [(1, P.FAILED, S), (2, P.NEW, S), (3, P.NEW, S)],
        5,
        ["app-2"],
        [],
    ),
    (
        "latest-only: cancels older queued, starts newest",
        [(1, P.NEW, SLO), (2, P.NEW, SLO), (3, P.NEW, SLO)],
        5,
        ["app-3"],
        ["app-1", "app-2"],
    ),
    (
        "latest-only: never cancels the running one",
        [(1, P.RUNNING, SLO), (2, P.NEW, SLO), (3, P.NEW, SLO)],
        5,
        [],
        ["app-2"],
    ),
    ("latest-only: single queued waits", [(1, P.RUNNING, SLO), (2, P.NEW, SLO)], 5, [], []),
    (
        "latest-only after serial: cancels the older serial builds in the queue too",
        [(1, P.RUNNING, S), (2, P.NEW, S), (3, P.NEW, S), (4, P.NEW, SLO)],
        5,
        [],
        ["app-2", "app-3"],
    ),
    (
        "latest-only after parallel: older queued parallel builds go, the newest starts alone",
        [(1, P.NEW, PAR), (2, P.NEW, SLO)],
        5,
        ["app-2"],
        ["app-1"],
    ),
    (
        "serial after latest-only: builds queued after the newest latest-only one stay",
        [(1, P.RUNNING, SLO), (2, P.NEW, SLO), (3, P.NEW, SLO), (4, P.NEW, S)],
        5,
        [],
        ["app-2"],
    ),
    (
        "parallel: all start",
        [(1, P.NEW, PAR), (2, P.NEW, PAR), (3, P.NEW, PAR)],
        5,
        ["app-1", "app-2", "app-3"],
        [],
    ),
    (
        "parallel: alongside running parallel",
        [(1, P.RUNNING, PAR), (2, P.NEW, PAR)],
        5,
        ["app-2"],
        [],
    ),
    ("parallel: waits for running serial", [(1, P.RUNNING, S), (2, P.NEW, PAR)], 5, [], []),
    ("mixed: serial waits for running parallel", [(1, P.RUNNING, PAR), (2, P.NEW, S)], 5, [], []),
    (
        "mixed: leading parallel builds start, the serial behind them waits",
        [(1, P.NEW, PAR), (2, P.NEW, PAR), (3, P.NEW, S)],
        5,
        ["app-1", "app-2"],
        [],
    ),
    (
        "mixed: a leading serial starts alone",
        [(1, P.NEW, S), (2, P.NEW, PAR)],
        5,
        ["app-1"],
        [],
    ),
    (
        "cap: parallel limited by the cap",
        [(1, P.NEW, PAR), (2, P.NEW, PAR), (3, P.NEW, PAR)],
        2,
        ["app-1", "app-2"],
        [],
    ),
    (
        "cap: running builds use slots",
        [(1, P.RUNNING, PAR), (2, P.NEW, PAR), (3, P.NEW, PAR)],
        2,
        ["app-2"],
        [],
    ),
    ("cap: full", [(1, P.RUNNING, PAR), (2, P.RUNNING, PAR), (3, P.NEW, PAR)], 2, [], []),
]


@pytest.mark.parametrize(
    ("rows", "cap", "start", "cancel"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_single_config(
    rows: list[tuple[int, P, str]], cap: int, start: list[str], cancel: list[str]
) -> None:
    builds = [build("app", n, phase, policy=policy) for n, phase, policy in rows]
    decision = scheduling.decide(builds, max_concurrent=cap)
    assert names(decision.start) == start
    assert sorted(names(decision.cancel)) == cancel


def test_cap_admits_oldest_first_across_configs() -> None:
    builds = [
        build("b", 1, P.NEW),
        build("a", 1, P.NEW),
        build("c", 1, P.NEW),
    ]
    # creation times follow the number; give config "a" the oldest build explicitly
    from dataclasses import replace

    from tests.factories import T0

    builds[1] = replace(builds[1], meta=replace(builds[1].meta, creation_timestamp=T0))
    decision = scheduling.decide(builds, max_concurrent=2)
    assert names(decision.start) == ["a-1", "b-1"]


def test_each_config_runs_its_own_serial_build() -> None:
    builds = [build("a", 1, P.RUNNING), build("a", 2, P.NEW), build("b", 1, P.NEW)]
    decision = scheduling.decide(builds, max_concurrent=5)
    assert names(decision.start) == ["b-1"]


def test_terminal_builds_are_ignored_and_queue_depth_counts_new() -> None:
    builds = [build("a", 1, P.COMPLETE), build("a", 2, P.NEW), build("a", 3, P.NEW)]
    assert scheduling.queue_depth(builds) == 2
    assert names(scheduling.decide(builds, max_concurrent=1).start) == ["a-2"]
