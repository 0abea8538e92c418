"""Both executors hand the planner the same inputs for a Build: for every row of the
planning table (tests/planning/test_needs.py) the host executor's PlanContext and a build
pod's PlanContext name the same secrets, config maps and image pull secrets, and agree on
whether there are pull, push and git fetch credentials. Only the host side resolves names
from settings, so this runs without buildah or a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.planning.test_buildah import make_build
from tests.planning.test_needs import CASES
from triggerd.executors.local import LocalExecutor
from triggerd.logs import LogStore
from triggerd.planning import buildah, jobs
from triggerd.planning.needs import needs
from triggerd.settings import SecretSettings, Settings

# Every key any use reads, so one secret serves as pull, push, fetch or mounted input.
EVERY_USE = SecretSettings(
    data={".dockerconfigjson": json.dumps({"auths": {}}), "ssh-privatekey": "key", "token": "t"}
)


def summary(ctx: buildah.PlanContext) -> dict[str, Any]:
    return {
        "secrets": sorted(ctx.secret_dirs),
        "config_maps": sorted(ctx.config_map_dirs),
        "image_pull": sorted(ctx.image_pull_auth_files),
        "pull": ctx.pull_auth_file is not None,
        "push": ctx.push_auth_file is not None,
        "fetch": ctx.git_ssh_key_file is not None,
    }


@pytest.mark.parametrize("spec_doc", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_host_and_pod_contexts_name_the_same_inputs(tmp_path: Path, spec_doc: Any) -> None:
    build = make_build(spec_doc)
    reads = needs(build)
    names = {*reads.secrets, *reads.image_pull_secrets}
    names |= {n for n in (reads.pull_secret, reads.push_secret, reads.fetch_secret) if n}
    settings = Settings(
        data_dir=tmp_path / "data",
        secrets=dict.fromkeys(names, EVERY_USE),
        config_maps={name: {"key": "value"} for name in reads.config_maps},
    )
    executor = LocalExecutor(settings, LogStore(tmp_path / "logs"), tmp_path / "work")
    workspace = executor.workspace(build.namespace, build.name)
    workspace.mkdir(parents=True)
    host = executor.context(build, workspace)
    pod = jobs.plan_context(build, jobs.JobOptions(namespace="builds", image="triggerd:test"))
    assert summary(host) == summary(pod)
    assert summary(host) == {
        "secrets": list(reads.secrets),
        "config_maps": list(reads.config_maps),
        "image_pull": sorted(reads.image_pull_secrets),
        "pull": reads.pull_secret is not None,
        "push": reads.push_secret is not None,
        "fetch": reads.fetch_secret is not None,
    }
