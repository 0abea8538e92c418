"""Run policies: which queued builds of one BuildConfig may start now (pure).

One module per policy, as OpenShift has. Each build carries the policy it was created under
(label ``openshift.io/build.start-policy``), so changing a BuildConfig's runPolicy affects
only builds created afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from triggerd.model.buildconfigs import RunPolicy
from triggerd.model.builds import Build
from triggerd.policies import parallel, serial, serial_latest_only

#: policy → (builds of one config, sorted by number) → builds of that policy runnable now
RUNNABLE: Mapping[RunPolicy, Callable[[Sequence[Build]], list[Build]]] = {
    RunPolicy.SERIAL: serial.runnable,
    RunPolicy.SERIAL_LATEST_ONLY: serial_latest_only.runnable,
    RunPolicy.PARALLEL: parallel.runnable,
}

#: policy → builds of one config → queued builds to cancel now
SUPERSEDED: Mapping[RunPolicy, Callable[[Sequence[Build]], list[Build]]] = {
    RunPolicy.SERIAL: lambda builds: [],
    RunPolicy.SERIAL_LATEST_ONLY: serial_latest_only.superseded,
    RunPolicy.PARALLEL: lambda builds: [],
}


def policy_of(build: Build) -> RunPolicy:
    try:
        return RunPolicy(build.start_policy)
    except ValueError:
        return RunPolicy.SERIAL
