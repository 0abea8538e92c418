"""BuildConfig/Build/BuildRequest parsing, validation with field paths, and round trips."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import T0, buildconfig, buildconfig_doc
from triggerd import imagechange
from triggerd.errors import Invalid
from triggerd.model import buildconfigs, builds, requests
from triggerd.store import kubernetes as kubernetes_store

EXPORT = Path(__file__).parents[2] / "config" / "examples" / "openshift-export.yaml"


def causes(doc: Any) -> dict[str, str]:
    with pytest.raises(Invalid) as info:
        buildconfigs.parse(doc)
    return {c.path: c.message for c in info.value.causes}


def test_openshift_export_loads_and_round_trips_unknown_fields() -> None:
    doc = yaml.safe_load(EXPORT.read_text())
    config = buildconfigs.parse(doc)
    assert config.name == "ruby-hello-world"
    assert config.namespace == "team-a"
    assert config.last_version == 7
    assert config.run_policy is buildconfigs.RunPolicy.SERIAL
    assert [t.type.value for t in config.triggers] == [
        "GitHub",
        "Generic",
        "ConfigChange",
        "ImageChange",
    ]
    docker = config.spec.strategy.docker
    assert docker is not None and docker.from_image is not None
    assert docker.from_image.name == "registry.example.com/ubi8/ruby-31:latest"
    assert config.spec.source.context_dir == "app"
    out = config.to_dict()
    # Everything the user wrote survives; only server-regenerated metadata is dropped.
    assert out["spec"] == doc["spec"]
    assert out["metadata"]["labels"] == doc["metadata"]["labels"]
    assert out["metadata"]["annotations"] == doc["metadata"]["annotations"]
    assert "managedFields" not in out["metadata"]
    assert out["status"]["lastVersion"] == 7
    # And what comes out parses to the same object again.
    assert buildconfigs.parse(out).to_dict() == out


def test_triggerd_api_version_is_accepted() -> None:
    doc = buildconfig_doc()
    doc["apiVersion"] = "triggerd.dev/v1"
    assert buildconfigs.parse(doc).name == "app"


def test_defaults() -> None:
    config = buildconfig()
    assert config.namespace == "default"
    assert config.successful_builds_history_limit == 5
    assert config.failed_builds_history_limit == 5
    assert config.spec.completion_deadline_seconds == 7 * 24 * 3600
    assert config.spec.strategy.docker is not None
    assert config.spec.strategy.docker.dockerfile_path == "Dockerfile"


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d["spec"]["source"].update(contextDir="../etc"), "spec.source.contextDir", ".."),
        (
            lambda d: d["spec"]["source"].update(contextDir="/etc"),
            "spec.source.contextDir",
            "relative path",
        ),
        (
            lambda d: d["spec"]["strategy"]["dockerStrategy"].update(
                dockerfilePath="../Dockerfile"
            ),
            "spec.strategy.dockerStrategy.dockerfilePath",
            "must be a relative path inside the context",
        ),
        (lambda d: d["spec"]["strategy"].update(type="Magic"), "spec.strategy.type", "Magic"),
        (lambda d: d["spec"].update(runPolicy="Sometimes"), "spec.runPolicy", "Sometimes"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "metadata.name", "RFC 1123"),
        (lambda d: d["spec"]["source"]["git"].pop("uri"), "spec.source.git.uri", "required"),
        (
            lambda d: d["spec"]["output"]["to"].update(name="UPPER/case:tag"),
            "spec.output.to.name",
            "invalid",
        ),
        (
            lambda d: d["spec"].update(completionDeadlineSeconds=0),
            "spec.completionDeadlineSeconds",
            "at least 1",
        ),
        (
            lambda d: d["spec"].update(successfulBuildsHistoryLimit=-1),
            "spec.successfulBuildsHistoryLimit",
            "at least 0",
        ),
        (
            lambda d: d["spec"].update(triggers=[{"type": "GitHub", "github": {}}]),
            "spec.triggers[0].github",
            "secret",
        ),
        (lambda d: d["spec"].update(triggers=[{"type": "Cron"}]), "spec.triggers[0].type", "Cron"),
        (
            lambda d: d["spec"]["strategy"]["dockerStrategy"].update(buildArgs=[{"value": "x"}]),
            "spec.strategy.dockerStrategy.buildArgs[0].name",
            "required",
        ),
        (lambda d: d.update(apiVersion="v1"), "apiVersion", "unsupported"),
        (
            lambda d: d["spec"]["source"]["git"].update(ref="--upload-pack=evil"),
            "spec.source.git.ref",
            "'-'",
        ),
    ],
)
def test_invalid_fields_are_named(mutate: Any, path: str, fragment: str) -> None:
    doc = buildconfig_doc()
    mutate(doc)
    found = causes(doc)
    assert path in found, found
    assert fragment in found[path]


def test_every_error_is_reported_at_once() -> None:
    doc = buildconfig_doc(run_policy="Nope")
    doc["spec"]["source"]["contextDir"] = "../x"
    doc["spec"]["strategy"]["dockerStrategy"]["noCache"] = "yes"
    found = causes(doc)
    assert {
        "spec.runPolicy",
        "spec.source.contextDir",
        "spec.strategy.dockerStrategy.noCache",
    } <= set(found)


@pytest.mark.parametrize("doc", [None, [], "text", 3])
def test_non_mapping_documents_are_invalid(doc: Any) -> None:
    with pytest.raises(Invalid):
        buildconfigs.parse(doc)


def test_instantiate_names_labels_and_causes() -> None:
    config = buildconfig("web", run_policy="SerialLatestOnly")
    build = requests.instantiate(config, requests.BuildRequest(), number=3, uid="u", created=T0)
    assert build.name == "web-3"
    assert build.meta.labels[builds.CONFIG_LABEL] == "web"
    assert build.meta.labels[builds.START_POLICY_LABEL] == "SerialLatestOnly"
    assert build.meta.annotations[builds.NUMBER_ANNOTATION] == "3"
    assert build.triggered_by == ({"message": "Manually triggered"},)
    assert build.phase is builds.Phase.NEW
    doc = build.to_dict()
    assert "triggers" not in doc["spec"] and "runPolicy" not in doc["spec"]
    assert doc["status"]["config"] == {"kind": "BuildConfig", "namespace": "default", "name": "web"}
    assert builds.from_dict(doc).to_dict() == doc


def test_build_request_overrides() -> None:
    doc = buildconfig_doc()
    doc["spec"]["strategy"]["dockerStrategy"]["buildArgs"] = [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "2"},
    ]
    config = buildconfigs.parse(doc)
    request = requests.parse(
        {
            "kind": "BuildRequest",
            "metadata": {"name": "app"},
            "revision": {"git": {"commit": "abc123def"}},
            "env": [{"name": "E", "value": "x"}],
            "dockerStrategyOptions": {"buildArgs": [{"name": "B", "value": "3"}], "noCache": True},
        },
        "app",
    )
    build = requests.instantiate(config, request, number=1, uid="u", created=T0)
    docker = build.spec.strategy.docker
    assert docker is not None
    assert [(a.name, a.value) for a in docker.build_args] == [("A", "1"), ("B", "3")]
    assert [(e.name, e.value) for e in docker.env] == [("E", "x")]
    assert docker.no_cache is True
    assert build.spec.revision is not None and build.spec.revision.commit == "abc123def"
    # the config itself is untouched
    assert config.spec.raw == doc["spec"]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"metadata": {"name": "other"}}, "metadata.name"),
        ({"revision": {"git": {"commit": "not-hex!"}}}, "revision.git.commit"),
        ({"env": [{"name": 3}]}, "env[0].name"),
        ({"dockerStrategyOptions": {"noCache": "yes"}}, "dockerStrategyOptions.noCache"),
        ({"triggeredBy": ["x"]}, "triggeredBy[0]"),
    ],
)
def test_bad_build_requests(body: dict[str, Any], path: str) -> None:
    with pytest.raises(Invalid) as info:
        requests.parse(body, "app")
    assert path in {c.path for c in info.value.causes}


def test_parse_does_not_mutate_input() -> None:
    doc = yaml.safe_load(EXPORT.read_text())
    before = copy.deepcopy(doc)
    buildconfigs.parse(doc).to_dict()
    assert doc == before


def test_request_env_and_from_go_to_the_source_strategy() -> None:
    doc = buildconfig_doc()
    doc["spec"]["strategy"] = {
        "type": "Source",
        "sourceStrategy": {"from": {"kind": "DockerImage", "name": "registry.test/builder:1"}},
    }
    doc["metadata"]["annotations"] = {"triggerd.dev/cache-repository": "registry.test/cache"}
    config = buildconfigs.parse(doc)
    request = requests.parse(
        {
            "env": [{"name": "E", "value": "x"}],
            "from": {"kind": "DockerImage", "name": "registry.test/builder:2"},
        },
        "app",
    )
    build = requests.instantiate(config, request, number=1, uid="u", created=T0)
    strategy = build.to_dict()["spec"]["strategy"]
    assert "dockerStrategy" not in strategy
    assert strategy["sourceStrategy"]["env"] == [{"name": "E", "value": "x"}]
    assert strategy["sourceStrategy"]["from"]["name"] == "registry.test/builder:2"
    assert build.meta.annotations["triggerd.dev/cache-repository"] == "registry.test/cache"


# spec.resources (corev1.ResourceRequirements) ------------------------------------------------


def test_resources_are_parsed_kept_and_inherited_by_builds() -> None:
    doc = buildconfig_doc(
        resources={
            "requests": {"cpu": "500m", "memory": "2Gi"},
            "limits": {"memory": "4Gi", "cpu": 1.5},
        }
    )
    config = buildconfigs.parse(doc)
    assert dict(config.spec.resources.requests) == {"cpu": "500m", "memory": "2Gi"}
    assert dict(config.spec.resources.limits) == {
        "memory": "4Gi",
        "cpu": "1.5",
    }  # a number: its text
    assert config.to_dict()["spec"]["resources"] == doc["spec"]["resources"]  # kept as given
    build = requests.instantiate(config, requests.BuildRequest(), number=1, uid="u", created=T0)
    assert build.spec.resources == config.spec.resources
    again = builds.from_dict(build.to_dict())
    assert dict(again.spec.resources.requests) == {"cpu": "500m", "memory": "2Gi"}


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"requests": {"cpu": "lots"}}, "spec.resources.requests.cpu"),
        ({"limits": {"memory": "-1Gi"}}, "spec.resources.limits.memory"),
        ({"limits": {"memory": True}}, "spec.resources.limits.memory"),
        ({"requests": {"bad name!": "1"}}, "spec.resources.requests.bad name!"),
        ({"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}}, "spec.resources.requests"),
        ({"claims": [{"name": "gpu"}]}, "spec.resources.claims"),
        ({"requets": {"cpu": "1"}}, "spec.resources.requets"),
        ({"requests": ["cpu"]}, "spec.resources.requests"),
    ],
    ids=["not-a-quantity", "negative", "boolean", "bad-name", "request-above-limit", "claims",
         "typo", "not-a-map"],
)  # fmt: skip
def test_bad_resources_are_refused_with_their_field(resources: Any, field: str) -> None:
    with pytest.raises(Invalid) as caught:
        buildconfigs.parse(buildconfig_doc(resources=resources))
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", "0.5"), ("2", "2"), ("1Ki", "1024"), ("1.5Gi", "1610612736"), ("1e3", "1000"),
     ("100M", "100000000"), (".5", "0.5"), ("1E2", "100")],
)  # fmt: skip
def test_quantities(text: str, value: str) -> None:
    from decimal import Decimal

    from triggerd.model import specs

    assert specs.parse_quantity(text) == Decimal(value)


# Annotations a Build inherits from its BuildConfig only -----------------------------------


def test_config_owned_annotations_come_from_the_config_never_from_the_request() -> None:
    doc = buildconfig_doc()
    doc["metadata"]["annotations"] = {
        buildconfigs.PRIVILEGED_ANNOTATION: "true",
        buildconfigs.CACHE_ANNOTATION: "registry.test/cache/app",
    }
    request = requests.BuildRequest(
        annotations={
            buildconfigs.PRIVILEGED_ANNOTATION: "false",
            buildconfigs.CACHE_ANNOTATION: "attacker.test/steal",
            "note": "kept",
        }
    )
    build = requests.instantiate(buildconfigs.parse(doc), request, number=1, uid="u", created=T0)
    assert build.meta.annotations[buildconfigs.PRIVILEGED_ANNOTATION] == "true"
    assert build.meta.annotations[buildconfigs.CACHE_ANNOTATION] == "registry.test/cache/app"
    assert build.meta.annotations["note"] == "kept"
    plain = requests.instantiate(buildconfig(), request, number=1, uid="u", created=T0)
    assert buildconfigs.PRIVILEGED_ANNOTATION not in plain.meta.annotations
    assert buildconfigs.CACHE_ANNOTATION not in plain.meta.annotations


# BuildRequests cannot set triggerd's annotations ------------------------------------------

#: Every annotation triggerd reads from a Build (and the ones it writes there itself).
INTERPRETED_ANNOTATIONS = (
    buildconfigs.PRIVILEGED_ANNOTATION,  # planning/jobs.py: a privileged build pod
    buildconfigs.CACHE_ANNOTATION,  # where the layer cache is pushed, with the push secret
    builds.BINARY_INPUT_ANNOTATION,  # which stored upload the executor extracts
    builds.BINARY_AS_FILE_ANNOTATION,
    imagechange.IMAGE_TRIGGERS_ANNOTATION,  # the images a build recorded (lastTriggered…)
    kubernetes_store.QUEUED_ANNOTATION,  # the queue order of Build resources
    builds.NUMBER_ANNOTATION,
    builds.CONFIG_ANNOTATION,
    builds.CLONE_ANNOTATION,
    buildconfigs.PAUSED_ANNOTATION,
)


@pytest.mark.parametrize("key", INTERPRETED_ANNOTATIONS)
def test_a_build_request_cannot_set_an_annotation_triggerd_reads(key: str) -> None:
    body = {"metadata": {"annotations": {key: "x", "team.example.com/owner": "ada"}}}
    with pytest.raises(Invalid) as info:
        requests.parse(body, "app")
    assert [c.path for c in info.value.causes] == [f"metadata.annotations.{key}"]
    assert requests.is_reserved_annotation(key)


def test_a_build_request_keeps_its_own_annotations() -> None:
    body = {"metadata": {"annotations": {"team.example.com/owner": "ada", "note": "n"}}}
    request = requests.parse(body, "app")
    build = requests.instantiate(buildconfig(), request, number=1, uid="u", created=T0)
    assert build.meta.annotations["team.example.com/owner"] == "ada"
    assert build.meta.annotations["note"] == "n"


# Binary configs need an upload ------------------------------------------------------------


def binary_config(**annotations: str) -> buildconfigs.BuildConfig:
    doc = buildconfig_doc("bin", source={"type": "Binary", "binary": {}})
    if annotations:
        doc["metadata"]["annotations"] = annotations
    return buildconfigs.parse(doc)


def test_a_binary_config_builds_only_with_an_upload() -> None:
    config = binary_config()
    bare = requests.BuildRequest(triggered_by=({"message": "Build configuration change"},))
    refused = requests.refusal(config, bare)
    assert isinstance(refused, requests.BinaryInputRequired)
    reason = str(refused)
    assert "cannot start a binary build without input" in reason
    assert "instantiatebinary" in reason and "--from-build" in reason
    with pytest.raises(requests.BinaryInputRequired):
        requests.instantiate(config, bare, number=1, uid="u", created=T0)
    upload = requests.BuildRequest(
        annotations={builds.BINARY_INPUT_ANNOTATION: "sha256:" + "a" * 64}
    )
    assert requests.refusal(config, upload) is None
    build = requests.instantiate(config, upload, number=1, uid="u", created=T0)
    assert build.meta.annotations[builds.BINARY_INPUT_ANNOTATION] == "sha256:" + "a" * 64
    # other configs need nothing
    assert requests.refusal(buildconfig(), bare) is None


def test_a_paused_config_starts_no_build_not_even_a_manual_one() -> None:
    doc = buildconfig_doc()
    doc["metadata"]["annotations"] = {buildconfigs.PAUSED_ANNOTATION: "true"}
    config = buildconfigs.parse(doc)
    refused = requests.refusal(config, requests.BuildRequest())
    assert isinstance(refused, requests.ConfigPaused)
    assert "is paused" in str(refused) and buildconfigs.PAUSED_ANNOTATION in str(refused)
    with pytest.raises(requests.ConfigPaused):
        requests.instantiate(config, requests.BuildRequest(), number=1, uid="u", created=T0)
    original = requests.instantiate(
        buildconfig(), requests.BuildRequest(), number=1, uid="u", created=T0
    )
    with pytest.raises(requests.ConfigPaused):
        requests.clone(original, config, requests.BuildRequest(), number=2, uid="v", created=T0)


# Clones -------------------------------------------------------------------------------------


def test_a_clone_copies_the_earlier_builds_spec_not_the_configs() -> None:
    doc = buildconfig_doc(
        "web",
        run_policy="Serial",
        source={"type": "Git", "git": {"uri": "https://git.example.com/a.git", "ref": "main"},
                "dockerfile": "FROM busybox\nRUN echo one\n"},
        strategy={"type": "Docker", "dockerStrategy": {
            "env": [{"name": "MODE", "value": "old"}],
            "buildArgs": [{"name": "V", "value": "1"}],
        }},
    )  # fmt: skip
    doc["metadata"]["annotations"] = {buildconfigs.CACHE_ANNOTATION: "r.test/cache/one"}
    first_config = buildconfigs.parse(doc)
    revision = {"git": {"commit": "0123456789abcdef"}}
    request = requests.parse(
        {"metadata": {"labels": {"who": "ada"}, "annotations": {"note": "n"}},
         "revision": revision},
        "web",
    )  # fmt: skip
    original = requests.instantiate(first_config, request, number=1, uid="u1", created=T0)
    # The config moves on: other Dockerfile, env, output, policy, cache repository.
    doc["spec"]["source"]["dockerfile"] = "FROM busybox\nRUN echo two\n"
    doc["spec"]["strategy"]["dockerStrategy"]["env"] = [{"name": "MODE", "value": "new"}]
    doc["spec"]["output"] = {"to": {"kind": "DockerImage", "name": "r.test/elsewhere:v2"}}
    doc["spec"]["runPolicy"] = "Parallel"
    doc["metadata"]["annotations"] = {buildconfigs.CACHE_ANNOTATION: "r.test/cache/two"}
    now = buildconfigs.parse(doc)
    clone = requests.clone(original, now, requests.BuildRequest(), number=4, uid="u4", created=T0)
    assert clone.name == "web-4" and clone.meta.uid == "u4"
    assert clone.to_dict()["spec"] == {
        **original.to_dict()["spec"],
        "triggeredBy": [{"message": requests.MANUAL_CAUSE}],
    }
    assert clone.spec.source.dockerfile == "FROM busybox\nRUN echo one\n"
    assert clone.spec.revision is not None and clone.spec.revision.commit == "0123456789abcdef"
    labels, annotations = clone.meta.labels, clone.meta.annotations
    assert labels["who"] == "ada" and labels[builds.START_POLICY_LABEL] == "Parallel"
    assert annotations["note"] == "n"
    assert annotations[builds.CLONE_ANNOTATION] == "web-1"
    assert annotations[builds.NUMBER_ANNOTATION] == "4"
    # the config's own switches are the config's now, not the old build's
    assert annotations[buildconfigs.CACHE_ANNOTATION] == "r.test/cache/two"
    # env and build args may be added; they go on top of the old build's
    more = requests.parse(
        {"env": [{"name": "EXTRA", "value": "x"}],
         "dockerStrategyOptions": {"buildArgs": [{"name": "V", "value": "2"}]}},
        "web",
    )  # fmt: skip
    added = requests.clone(original, now, more, number=5, uid="u5", created=T0)
    docker = added.spec.strategy.docker
    assert docker is not None
    assert [(e.name, e.value) for e in docker.env] == [("MODE", "old"), ("EXTRA", "x")]
    assert [(a.name, a.value) for a in docker.build_args] == [("V", "2")]
    assert added.spec.revision == original.spec.revision


def test_a_clone_keeps_the_upload_and_drops_per_run_annotations() -> None:
    digest = "sha256:" + "b" * 64
    upload = requests.BuildRequest(
        annotations={
            builds.BINARY_INPUT_ANNOTATION: digest,
            builds.BINARY_AS_FILE_ANNOTATION: "app.jar",
            imagechange.IMAGE_TRIGGERS_ANNOTATION: '{"k":"img@sha256:1"}',
        }
    )
    original = requests.instantiate(binary_config(), upload, number=1, uid="u", created=T0)
    clone = requests.clone(original, binary_config(), requests.BuildRequest(), number=2,
                           uid="u2", created=T0)  # fmt: skip
    assert clone.meta.annotations[builds.BINARY_INPUT_ANNOTATION] == digest
    assert clone.meta.annotations[builds.BINARY_AS_FILE_ANNOTATION] == "app.jar"
    assert imagechange.IMAGE_TRIGGERS_ANNOTATION not in clone.meta.annotations
    # A binary build without its upload cannot be cloned into one that would fail.
    bare = dataclasses.replace(original, meta=dataclasses.replace(original.meta, annotations={}))
    with pytest.raises(requests.BinaryInputRequired):
        requests.clone(bare, binary_config(), requests.BuildRequest(), number=3, uid="u3",
                       created=T0)  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"revision": {"git": {"commit": "abcdef12"}}}, "revision"),
        ({"from": {"kind": "DockerImage", "name": "busybox:2"}}, "from"),
    ],
)
def test_a_clone_request_cannot_change_what_is_built(body: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as info:
        requests.check_clone_request(requests.parse(body, "web-1"), "web-1")
    assert [c.path for c in info.value.causes] == [field]
