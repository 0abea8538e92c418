"""The Secrets and ConfigMaps a Build reads, by use (triggerd.planning.needs), table-style:
one row per strategy and input kind, including the custom build's source secret, which is
a mounted input rather than fetch credentials."""

from __future__ import annotations

from typing import Any

import pytest

from tests.planning.test_buildah import make_build
from triggerd.planning.needs import Needs, needs

GIT = {"type": "Git", "git": {"uri": "https://git.example.com/app.git"}}
OUTPUT = {"to": {"kind": "DockerImage", "name": "registry.example.com/team/app:v1"}}
IMAGE = {"kind": "DockerImage", "name": "registry.example.com/builder:1"}


def spec(strategy: dict[str, Any], source: dict[str, Any] | None = None, **extra: Any) -> Any:
    return {"source": source or GIT, "strategy": strategy, "output": OUTPUT, **extra}


def docker(**fields: Any) -> dict[str, Any]:
    return {"type": "Docker", "dockerStrategy": fields}


def s2i(**fields: Any) -> dict[str, Any]:
    return {"type": "Source", "sourceStrategy": {"from": IMAGE, **fields}}


def custom(**fields: Any) -> dict[str, Any]:
    return {"type": "Custom", "customStrategy": {"from": IMAGE, **fields}}


def volume(kind: str, name: str) -> dict[str, Any]:
    key = "secret" if kind == "Secret" else "configMap"
    name_key = "secretName" if kind == "Secret" else "name"
    return {
        "name": f"v-{name}",
        "source": {"type": kind, key: {name_key: name}},
        "mounts": [{"destinationPath": f"/run/{name}"}],
    }


INPUTS = {
    **GIT,
    "secrets": [{"secret": {"name": "s-b"}}, {"secret": {"name": "s-a"}}],
    "configMaps": [{"configMap": {"name": "cm-b"}}, {"configMap": {"name": "cm-a"}}],
}
IMAGES = {
    **GIT,
    "images": [
        {"from": IMAGE, "pullSecret": {"name": "img-2"}, "paths": [{"sourcePath": "/a"}]},
        {"from": IMAGE, "paths": [{"sourcePath": "/b"}]},
        {"from": IMAGE, "pullSecret": {"name": "img-1"}, "paths": [{"sourcePath": "/c"}]},
        {"from": IMAGE, "pullSecret": {"name": "img-2"}, "paths": [{"sourcePath": "/d"}]},
    ],
}
WITH_SOURCE_SECRET = {**GIT, "sourceSecret": {"name": "git-auth"}}
BINARY_WITH_SOURCE_SECRET = {"type": "Binary", "binary": {}, "sourceSecret": {"name": "git-auth"}}
PUSH = {"to": OUTPUT["to"], "pushSecret": {"name": "push"}}

CASES: list[tuple[str, dict[str, Any], Needs]] = [
    ("docker, nothing named", spec(docker()), Needs()),
    (
        "docker pull and push secrets",
        spec(docker(pullSecret={"name": "pull"}), output=PUSH),
        Needs(pull_secret="pull", push_secret="push"),
    ),
    (
        "the same secret to pull and to push",
        spec(docker(pullSecret={"name": "both"}), output={**PUSH, "pushSecret": {"name": "both"}}),
        Needs(pull_secret="both", push_secret="both"),
    ),
    (
        "source secrets and config maps, sorted",
        spec(docker(), INPUTS),
        Needs(secrets=("s-a", "s-b"), config_maps=("cm-a", "cm-b")),
    ),
    (
        "docker volumes join the inputs without duplicates",
        spec(
            docker(
                volumes=[
                    volume("Secret", "s-a"),
                    volume("Secret", "v-secret"),
                    volume("ConfigMap", "cm-a"),
                    volume("ConfigMap", "v-config"),
                ]
            ),
            INPUTS,
        ),
        Needs(secrets=("s-a", "s-b", "v-secret"), config_maps=("cm-a", "cm-b", "v-config")),
    ),
    (
        "image pull secrets: distinct, in order of first use",
        spec(docker(), IMAGES),
        Needs(image_pull_secrets=("img-2", "img-1")),
    ),
    (
        "docker: the source secret fetches",
        spec(docker(), WITH_SOURCE_SECRET),
        Needs(fetch_secret="git-auth"),
    ),
    (
        "source strategy: its pull secret, the source secret fetches",
        spec(s2i(pullSecret={"name": "builder-pull"}), WITH_SOURCE_SECRET),
        Needs(pull_secret="builder-pull", fetch_secret="git-auth"),
    ),
    (
        "custom: the source secret is a mounted input, not fetch credentials",
        spec(
            custom(
                pullSecret={"name": "builder-pull"},
                secrets=[{"secretSource": {"name": "token"}, "mountPath": "/var/run/token"}],
            ),
            {**WITH_SOURCE_SECRET, "secrets": [{"secret": {"name": "s-a"}}]},
        ),
        Needs(secrets=("git-auth", "s-a", "token"), pull_secret="builder-pull"),
    ),
    (
        "binary source: a source secret has nothing to fetch",
        spec(docker(), BINARY_WITH_SOURCE_SECRET),
        Needs(),
    ),
]


@pytest.mark.parametrize(
    ("spec_doc", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_needs(spec_doc: dict[str, Any], expected: Needs) -> None:
    assert needs(make_build(spec_doc)) == expected
