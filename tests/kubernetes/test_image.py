"""The Dockerfile, read statically (no image is built here): `triggerd serve` is the
entrypoint, the image runs as the non-root uid the Deployment expects, only runtime files go
in, and it provides every program the build Job's containers call (the same image runs
them)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import factories
from triggerd.model import buildconfigs, requests
from triggerd.model.builds import Build
from triggerd.planning import buildah, jobs
from triggerd.planning.plan import Buildah, Command, Plan

REPO = Path(__file__).resolve().parents[2]
#: program -> the Debian package of the Dockerfile that provides it (None: the python base)
PROVIDERS: dict[str, str | None] = {
    "git": "git",
    "buildah": "buildah",
    "ssh": "openssh-client",
    "sh": None,
    "/bin/sh": None,
    "python": None,
}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def apt_packages() -> set[str]:
    packages: set[str] = set()
    for word, rest in final_stage():
        if word == "RUN" and "apt-get install" in rest:
            for command in rest.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["apt-get", "install"]:
                    packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def test_entrypoint_is_triggerd_serve_and_the_user_is_not_root() -> None:
    stage = final_stage()
    entrypoints = [json.loads(rest) for word, rest in stage if word == "ENTRYPOINT"]
    assert entrypoints == [["triggerd", "serve"]]
    assert not [rest for word, rest in stage if word == "CMD"]  # arguments come from the pod
    users = [rest for word, rest in stage if word == "USER"]
    assert users == ["10001:10001"]
    deployment = yaml.safe_load((REPO / "manifests/base/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (10001, 10001)
    assert pod["runAsNonRoot"] is True
    assert stage[0][1].startswith("python:3.11-slim")  # multi-stage, slim base
    assert sum(word == "FROM" for word, _ in instructions()) == 2


def test_only_runtime_files_are_sent_to_the_build() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line[1:] for line in lines if line.startswith("!")} == {
        "pyproject.toml", "README.md", "triggerd/",
    }  # fmt: skip
    copies = [rest for word, rest in instructions() if word == "COPY"]
    assert copies == ["pyproject.toml README.md ./", "triggerd ./triggerd",
                      "--from=wheels /wheels /wheels"]  # fmt: skip


def build_of(**spec: Any) -> Build:
    doc = factories.buildconfig_doc("app", namespace="triggerd")
    doc["spec"].update(spec)
    return requests.instantiate(buildconfigs.parse(doc), requests.BuildRequest(), number=1,
                                uid="u", created=factories.T0)  # fmt: skip


BUILDS: dict[str, Callable[[], Build]] = {
    "docker": lambda: build_of(),
    "ssh-source": lambda: build_of(
        source={
            "type": "Git",
            "git": {"uri": "git@git.example.com:team/app.git"},
            "sourceSecret": {"name": "git-ssh"},
        },
    ),
    "source-strategy": lambda: build_of(
        strategy={
            "type": "Source",
            "sourceStrategy": {
                "from": {"kind": "DockerImage", "name": "registry.example.com/builder:1"}
            },
        },
        postCommit={"script": "make test"},
    ),
    "custom-strategy": lambda: build_of(
        strategy={
            "type": "Custom",
            "customStrategy": {
                "from": {"kind": "DockerImage", "name": "registry.example.com/custom:1"}
            },
        },
    ),
}


def programs(plan: Plan) -> set[str]:
    found: set[str] = set()
    for step in plan.steps:
        action = step.action
        if isinstance(action, Command):
            assert isinstance(action.argv[0], str), action.argv
            found.add(action.argv[0])
            for value in action.env.values():
                if isinstance(value, str) and value.startswith("ssh "):
                    found.add("ssh")  # GIT_SSH_COMMAND
        if isinstance(action, Buildah) or isinstance(getattr(action, "buildah", None), Buildah):
            found.add("buildah")
    return found


def called_programs(build: Build) -> set[str]:
    """Every program the build Job's two containers start, for ``build``."""
    options = jobs.JobOptions(namespace="triggerd", image="triggerd:dev")
    plan = buildah.render(build, jobs.plan_context(build, options))
    job = jobs.render_job(build, plan, options)
    parts = jobs.split_plan(plan)
    called = programs(parts.fetch) | programs(parts.build)
    pod = job["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        assert container["image"] == "triggerd:dev"  # the one image, this Dockerfile's
        called.add(container["command"][0])
    return called


@pytest.mark.parametrize("make", BUILDS.values(), ids=BUILDS.keys())
def test_the_image_provides_every_program_the_job_runs(make: Any) -> None:
    called = called_programs(make())
    unknown = called - set(PROVIDERS)
    assert not unknown, f"the Job calls {unknown}: add them to the Dockerfile and PROVIDERS"
    needed = {PROVIDERS[p] for p in called} - {None}
    assert needed <= apt_packages()
    assert "ca-certificates" in apt_packages()  # https git and registries


def test_the_builds_above_call_git_ssh_buildah_and_python() -> None:
    """So the check above is not vacuous."""
    called = set().union(*(called_programs(make()) for make in BUILDS.values()))
    assert {"git", "ssh", "buildah", "python"} <= called
