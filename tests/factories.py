"""Small constructors of API objects for unit tests (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from triggerd.model import buildconfigs, builds, requests

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def buildconfig_doc(
    name: str = "app",
    *,
    namespace: str = "default",
    run_policy: str | None = None,
    uri: str = "https://git.example.com/team/app.git",
    ref: str = "main",
    output: str | None = "127.0.0.1:5000/team/app:latest",
    **spec_extra: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"type": "Git", "git": {"uri": uri, "ref": ref}},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    if output is not None:
        spec["output"] = {"to": {"kind": "DockerImage", "name": output}}
    if run_policy is not None:
        spec["runPolicy"] = run_policy
    spec.update(spec_extra)
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def buildconfig(name: str = "app", **kwargs: Any) -> buildconfigs.BuildConfig:
    return buildconfigs.parse(buildconfig_doc(name, **kwargs))


def build(
    config: str = "app",
    number: int = 1,
    phase: builds.Phase = builds.Phase.NEW,
    *,
    policy: str = "Serial",
    namespace: str = "default",
    created: datetime | None = None,
) -> builds.Build:
    bc = buildconfig(config, run_policy=policy, namespace=namespace)
    made = requests.instantiate(
        bc,
        requests.BuildRequest(),
        number=number,
        uid=f"uid-{config}-{number}",
        created=created or T0 + timedelta(seconds=number),
    )
    return replace(made, status=replace(made.status, phase=phase))
