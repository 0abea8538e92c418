"""Parsing of the strategy and hook fields this issue adds (pure): valid OpenShift shapes
load, bad ones are refused with the field path."""

from __future__ import annotations

from typing import Any

import pytest

from triggerd.model.fields import Fields
from triggerd.model.specs import StrategyType, parse_common_spec

BUILDER = {"kind": "DockerImage", "name": "quay.io/s2i/builder:1"}


def parse(spec: dict[str, Any]) -> tuple[Any, list[str]]:
    fields = Fields()
    parsed = parse_common_spec(spec, fields)
    return parsed, [f"{e.path}: {e.message}" for e in fields.errors]


def base(**extra: Any) -> dict[str, Any]:
    return {"source": {"git": {"uri": "https://example.com/a.git"}}, **extra}


def test_source_strategy_loads() -> None:
    spec, errors = parse(
        base(
            strategy={
                "type": "Source",
                "sourceStrategy": {
                    "from": BUILDER,
                    "scripts": "image:///opt/s2i/",
                    "env": [{"name": "A", "value": "1"}],
                    "incremental": True,
                    "forcePull": True,
                    "pullSecret": {"name": "pull"},
                },
            },
            postCommit={"script": "make test", "args": ["x"]},
        )
    )
    assert errors == []
    assert spec.strategy.type is StrategyType.SOURCE
    source = spec.strategy.source
    assert source.from_image.name == "quay.io/s2i/builder:1"
    assert source.scripts == "image:///opt/s2i"
    assert source.incremental and source.force_pull
    assert source.pull_secret == "pull"
    assert spec.post_commit.script == "make test"
    assert spec.post_commit.args == ("x",)


def test_type_is_inferred_from_the_strategy_block() -> None:
    spec, errors = parse(base(strategy={"sourceStrategy": {"from": BUILDER}}))
    assert errors == []
    assert spec.strategy.type is StrategyType.SOURCE


@pytest.mark.parametrize(
    ("strategy", "post_commit", "expected"),
    [
        ({"type": "Source"}, {}, "spec.strategy.sourceStrategy: is required"),
        ({"type": "Source", "sourceStrategy": {}}, {},
         "spec.strategy.sourceStrategy: is required"),
        ({"type": "Source", "sourceStrategy": {"from": BUILDER, "scripts": "ftp://x/y"}}, {},
         "spec.strategy.sourceStrategy.scripts: unsupported URL"),
        ({"type": "Source", "sourceStrategy": {"from": BUILDER, "incremental": "yes"}}, {},
         "spec.strategy.sourceStrategy.incremental: must be a boolean"),
        ({"type": "Docker"}, {"script": "a", "command": ["b"]},
         "spec.postCommit: give script or command, not both"),
        ({"type": "Docker"}, {"args": [1]}, "spec.postCommit.args[0]: must be a string"),
    ],
)  # fmt: skip
def test_bad_fields_are_named(
    strategy: dict[str, Any], post_commit: dict[str, Any], expected: str
) -> None:
    _, errors = parse(base(strategy=strategy, postCommit=post_commit))
    assert any(e.startswith(expected) for e in errors), errors


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"strategy": {"type": "Docker", "dockerStrategy": {"volumes": [
            {"name": "v", "source": {"type": "CSI"}, "mounts": [{"destinationPath": "/x"}]}]}}},
         "spec.strategy.dockerStrategy.volumes[0].source.type: unsupported value 'CSI'"),
        ({"strategy": {"type": "Docker", "dockerStrategy": {"volumes": [
            {"name": "v", "source": {"type": "Secret", "secret": {"secretName": "s"}},
             "mounts": [{"destinationPath": "relative"}]}]}}},
         "spec.strategy.dockerStrategy.volumes[0].mounts[0].destinationPath: must be an absolute"),
        ({"strategy": {"type": "Docker", "dockerStrategy": {
            "imageOptimizationPolicy": "Squash"}}},
         "spec.strategy.dockerStrategy.imageOptimizationPolicy: unsupported value 'Squash'"),
        ({"strategy": {"type": "Custom", "customStrategy": {}}},
         "spec.strategy.customStrategy.from: is required"),
        ({"strategy": {"type": "Custom", "customStrategy": {"from": BUILDER, "secrets": [
            {"secretSource": {"name": "s"}, "mountPath": "rel"}]}}},
         "spec.strategy.customStrategy.secrets[0].mountPath: must be an absolute path"),
        ({"source": {"git": {"uri": "https://e.com/a.git"}, "images": [
            {"from": BUILDER, "paths": [{"sourcePath": "opt", "destinationDir": "x"}]}]}},
         "spec.source.images[0].paths[0].sourcePath: must be an absolute path"),
        ({"source": {"git": {"uri": "https://e.com/a.git"},
                     "secrets": [{"secret": {"name": "s"}, "destinationDir": "../up"}]}},
         "spec.source.secrets[0].destinationDir: must be a relative path"),
        ({"source": {"binary": {"asFile": "a/b"}}}, "spec.source.binary.asFile: must be a plain"),
        ({"source": {"git": {"uri": "https://e.com/a.git"}, "binary": {}}},
         "spec.source.binary: cannot be combined with git"),
    ],
)  # fmt: skip
def test_input_and_option_errors_are_named(spec: dict[str, Any], expected: str) -> None:
    doc = base(**spec) if "source" not in spec else spec
    _, errors = parse(doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_inputs_and_options_load() -> None:
    spec, errors = parse(
        {
            "source": {
                "type": "Binary",
                "binary": {"asFile": "app.jar"},
                "secrets": [{"secret": {"name": "s"}, "destinationDir": "creds"}],
                "configMaps": [{"configMap": {"name": "c"}}],
            },
            "strategy": {
                "type": "Docker",
                "dockerStrategy": {
                    "imageOptimizationPolicy": "SkipLayers",
                    "volumes": [{"name": "v", "source": {"type": "ConfigMap",
                                 "configMap": {"name": "c"}},
                                 "mounts": [{"destinationPath": "/etc/c"}]}],
                },
            },
        }
    )  # fmt: skip
    assert errors == []
    assert spec.source.binary.as_file == "app.jar"
    assert spec.source.secrets[0].destination_dir == "creds"
    assert spec.strategy.docker.volumes[0].destinations == ("/etc/c",)
