"""The BuildConfig and Build CRDs: structural, generated from OpenShift's types, and accepting
everything triggerd writes and every example without pruning a field.

The API server is not here, so :mod:`tests.kubernetes.crd_schema` stands in for its
validation and pruning; the tests at the top show that checker failing where the API
server would refuse or drop something.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import factories
from tests.kubernetes.conftest import NAMESPACE
from tests.kubernetes.crd_schema import crd_schema, preserved_paths, problems, structural_problems
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.kubernetes.test_store import new_build
from triggerd import imagechange, lifecycle, matching
from triggerd.events import Commit as PushCommit
from triggerd.events import GenericTrigger, GitPush, Person, Provider, RefKind
from triggerd.model import buildconfigs, builds, requests, specs
from triggerd.model import meta as metas
from triggerd.model.buildconfigs import BuildConfig, TriggerType
from triggerd.model.builds import Build, Phase, Reason, Stage, StageName
from triggerd.store.kubernetes import (
    KubernetesStore,
    build_to_resource,
    config_from_resource,
    config_to_resource,
)

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
DIGEST = "sha256:" + "ab" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ADA = specs.SourceControlUser(name="Ada", email="ada@example.com")
#: what the fetch reports (Build.spec.revision)
REVISION = specs.SourceRevision(commit=COMMIT, author=ADA, committer=ADA, message="Fix it")


def load_crd(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((MANIFESTS / "base" / name).read_text(encoding="utf-8"))
    return doc


CRDS = {
    "BuildConfig": load_crd("crd-buildconfigs.yaml"),
    "Build": load_crd("crd-builds.yaml"),
    "Delivery": load_crd("crd-deliveries.yaml"),
    "ImageStream": load_crd("crd-imagestreams.yaml"),
}
SCHEMAS = {kind: crd_schema(crd) for kind, crd in CRDS.items()}


def as_resource(doc: dict[str, Any]) -> dict[str, Any]:
    """An OpenShift document as the custom resource ``kubectl apply`` would send."""
    resource = copy.deepcopy(doc)
    resource["apiVersion"] = "triggerd.dev/v1"
    return resource


# The checker and the schemas ------------------------------------------------------------------


def test_the_crds_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("generate_crds", MANIFESTS / "generate_crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["generate_crds.py", "--check"]) == 0


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schemas_are_structural_and_closed(kind: str) -> None:
    assert structural_problems(SCHEMAS[kind]) == []
    # OpenShift's types have no open-ended field: nothing is kept unchecked
    assert preserved_paths(SCHEMAS[kind]) == []


def minimal_build() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((MANIFESTS / "examples/build.yaml").read_text())
    return doc


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["spec"].update(bogus=1), "spec.bogus: not in the schema, would be pruned"),
        (lambda d: d["status"].update(phase="Exploded"), "'Exploded' is not one of"),
        (lambda d: d["status"].update(duration="60s"), "status.duration: must be integer"),
        (lambda d: d["spec"].update(nodeSelector={"a": 1}), "spec.nodeSelector.a: must be string"),
        (lambda d: d["spec"].update(output=None), "spec.output: null would be dropped"),
        (lambda d: d["spec"].update(completionDeadlineSeconds=0), "below the minimum 1"),
        (lambda d: d["status"].update(startTimestamp="yesterday"), "not an RFC 3339 date-time"),
        (lambda d: d["spec"].update(resources={"limits": {"cpu": "lots"}}), "does not match"),
        (
            lambda d: d["spec"].update(resources={"limits": {"cpu": 0.5}}),
            "must be an integer or a string",
        ),
        (lambda d: d["spec"]["source"]["git"].pop("uri"), "spec.source.git: uri is required"),
        (lambda d: d["status"].pop("phase"), "status: phase is required"),
        (
            lambda d: d["spec"]["strategy"]["dockerStrategy"].update(
                volumes=[
                    {
                        "name": "v",
                        "source": {"type": "Secret", "secret": {"secretName": "s"}},
                        "mounts": [{"destinationPath": "/a"}],
                    },
                ]
                * 2
            ),
            "duplicate entries",
        ),
    ],
    ids=[
        "unknown",
        "enum",
        "type",
        "map-value",
        "null",
        "minimum",
        "date-time",
        "quantity",
        "quantity-float",
        "required",
        "status-required",
        "list-map",
    ],
)
def test_the_checker_finds_what_the_api_server_refuses_or_drops(mutate: Any, expected: str) -> None:
    doc = minimal_build()
    assert problems(doc, SCHEMAS["Build"]) == []
    mutate(doc)
    found = problems(doc, SCHEMAS["Build"])
    assert any(expected in p for p in found), found


def test_openshift_nulls_are_accepted_where_openshift_writes_them() -> None:
    doc = minimal_build()
    doc["spec"]["nodeSelector"] = None
    doc["spec"]["triggeredBy"] = None
    doc["status"]["stages"] = [{"name": "Build", "startTime": None, "durationMilliseconds": 5}]
    assert problems(doc, SCHEMAS["Build"]) == []


# Objects triggerd's model makes ---------------------------------------------------------------

FULL_DOCKER: dict[str, Any] = {
    "apiVersion": "build.openshift.io/v1",
    "kind": "BuildConfig",
    "metadata": {
        "name": "full",
        "namespace": NAMESPACE,
        "labels": {"app": "full"},
        "annotations": {buildconfigs.CACHE_ANNOTATION: "none"},
    },
    "spec": {
        "serviceAccount": "builder",
        "runPolicy": "SerialLatestOnly",
        "source": {
            "type": "Git",
            "git": {
                "uri": "https://git.example.com/team/app.git",
                "ref": "main",
                "httpProxy": "http://proxy.example.com:3128",
                "noProxy": ".cluster.local",
            },
            "contextDir": "services/app",
            "sourceSecret": {"name": "git-creds"},
            "secrets": [{"secret": {"name": "npmrc"}, "destinationDir": "creds"}],
            "configMaps": [{"configMap": {"name": "settings"}, "destinationDir": "conf"}],
            "images": [
                {
                    "from": {"kind": "DockerImage", "name": "registry.example.com/tools:1"},
                    "as": ["tools:1"],
                    "paths": [{"sourcePath": "/usr/bin/tool", "destinationDir": "bin"}],
                    "pullSecret": {"name": "tools-pull"},
                }
            ],
        },
        "strategy": {
            "type": "Docker",
            "dockerStrategy": {
                "from": {"kind": "DockerImage", "name": "registry.example.com/base:1"},
                "pullSecret": {"name": "base-pull"},
                "dockerfilePath": "build/Dockerfile",
                "noCache": True,
                "forcePull": True,
                "env": [{"name": "MODE", "value": "release"}],
                "buildArgs": [{"name": "VERSION", "value": "1.2.3"}],
                "imageOptimizationPolicy": "SkipLayers",
                "volumes": [
                    {
                        "name": "ca",
                        "source": {
                            "type": "Secret",
                            "secret": {"secretName": "ca-certs", "defaultMode": 0o444},
                        },
                        "mounts": [{"destinationPath": "/etc/pki/extra"}],
                    },
                    {
                        "name": "conf",
                        "source": {"type": "ConfigMap", "configMap": {"name": "settings"}},
                        "mounts": [{"destinationPath": "/etc/app"}, {"destinationPath": "/conf"}],
                    },
                ],
            },
        },
        "output": {
            "to": {"kind": "DockerImage", "name": "registry.example.com/team/app:latest"},
            "pushSecret": {"name": "push-creds"},
            "imageLabels": [{"name": "team", "value": "a"}, {"name": "empty"}],
        },
        "resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": 2, "memory": "2Gi"},
        },
        "postCommit": {"script": "make test", "args": ["-v"]},
        "completionDeadlineSeconds": 1800,
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "mountTrustedCA": False,
        "successfulBuildsHistoryLimit": 3,
        "failedBuildsHistoryLimit": 0,
        "triggers": [
            {
                "type": "GitHub",
                "github": {
                    "secretReference": {"name": "hook"},
                    "branches": ["main", "release/*"],
                    "tags": ["v*"],
                    "paths": ["services/app/*"],
                    "ignorePaths": ["*.md"],
                    "ignoreAuthors": ["*[bot]"],
                    "skipCi": False,
                },
            },
            {"type": "GitLab", "gitlab": {"secret": "gitlab-secret", "branches": ["*"]}},
            {"type": "Bitbucket", "bitbucket": {"secretReference": {"name": "hook"}}},
            {
                "type": "Generic",
                "generic": {
                    "secret": "generic-secret",
                    "allowEnv": True,
                    "allowStrategyOptions": True,
                    "hmacHeader": "X-Signature",
                    "bearerSecretReference": {"name": "bearer"},
                },
            },
            {
                "type": "ImageChange",
                "imageChange": {
                    "from": {"kind": "DockerImage", "name": "registry.example.com/base:1"},
                    "pollInterval": "5m",
                    "paused": False,
                },
            },
            {"type": "ImageChange", "imageChange": {"pollInterval": 90}},
            {"type": "ConfigChange"},
        ],
    },
}

SOURCE_STRATEGY = {
    "type": "Source",
    "sourceStrategy": {
        "from": {"kind": "DockerImage", "name": "registry.example.com/ubi9/python-311:latest"},
        "scripts": "image:///usr/libexec/s2i",
        "incremental": True,
        "forcePull": True,
        "env": [{"name": "PIP_INDEX_URL", "value": "https://pypi.example.com/simple"}],
        "pullSecret": {"name": "builder-pull"},
    },
}
CUSTOM_STRATEGY = {
    "type": "Custom",
    "customStrategy": {
        "from": {"kind": "DockerImage", "name": "registry.example.com/custom-builder:1"},
        "env": [{"name": "TARGET", "value": "prod"}],
        "exposeDockerSocket": False,
        "forcePull": True,
        "pullSecret": {"name": "builder-pull"},
        "secrets": [{"secretSource": {"name": "signing-key"}, "mountPath": "/var/run/signing"}],
        "buildAPIVersion": "build.openshift.io/v1",
    },
}


def full_config(**spec: Any) -> BuildConfig:
    doc = copy.deepcopy(FULL_DOCKER)
    doc["spec"].update(spec)
    return buildconfigs.parse(doc)


CONFIGS: dict[str, Callable[[], BuildConfig]] = {
    "factory-minimal": lambda: factories.buildconfig("app", namespace=NAMESPACE),
    "docker-everything": full_config,
    "source": lambda: full_config(strategy=SOURCE_STRATEGY, postCommit={"command": ["true"]}),
    "custom": lambda: full_config(strategy=CUSTOM_STRATEGY, postCommit={}),
    "imagestreamtag-output": lambda: full_config(
        output={"to": {"kind": "ImageStreamTag", "name": "app:latest", "namespace": NAMESPACE}}
    ),
    "exported-status": lambda: dataclasses.replace(full_config(), last_version=41),
}


@pytest.mark.parametrize("make", CONFIGS.values(), ids=CONFIGS.keys())
def test_buildconfigs_from_the_model_validate_without_pruning(make: Any) -> None:
    resource = config_to_resource(make())
    assert problems(resource, SCHEMAS["BuildConfig"]) == []
    # and it reads back as the same config
    assert config_from_resource(resource).spec == make().spec


def push(provider: Provider) -> GitPush:
    author = Person(name="Ada", email="ada@example.com")
    head = PushCommit(id=COMMIT, message="Fix it", author=author, committer=author,
                      added=(), modified=("services/app/main.py",), removed=())  # fmt: skip
    return GitPush(
        provider=provider, delivery_id="d-1", repository_urls=("https://git.example.com/team/app",),
        ref="refs/heads/main", ref_kind=RefKind.BRANCH, ref_name="main", before=None,
        after=COMMIT, deleted=False, created=False, default_branch="main", head_commit=head,
        commits=(head,), pusher=author,
    )  # fmt: skip


def requests_of_every_cause(config: BuildConfig) -> dict[str, requests.BuildRequest]:
    generic_hook = next(t.webhook for t in config.triggers if t.type is TriggerType.GENERIC)
    assert generic_hook is not None
    generic = GenericTrigger(
        delivery_id=None, ref="main", commit=COMMIT, author=Person(name="Ada", email=""),
        committer=None, message="deploy", env=(("A", "1"),), build_args=(("B", "2"),),
        no_cache=True, repository_urls=(),
    )  # fmt: skip
    watched = imagechange.watched_images(config)[0]
    image_id = "registry.example.com/base@sha256:" + "cd" * 32
    return {
        "manual": requests.BuildRequest(),
        "github": matching.push_request(push(Provider.GITHUB), TriggerType.GITHUB),
        "gitlab": matching.push_request(push(Provider.GITLAB), TriggerType.GITLAB),
        "bitbucket": matching.push_request(push(Provider.BITBUCKET), TriggerType.BITBUCKET),
        "generic": matching.generic_request(generic, generic_hook),
        "image-change": requests.BuildRequest(
            from_image=imagechange.pinned_from(image_id),
            triggered_by=(imagechange.cause(watched, image_id, config.namespace),),
        ),
    }


def lived(build: Build, end: Phase) -> Build:
    """``build`` taken through its life to ``end`` by the lifecycle functions."""
    t = factories.T0
    if end is Phase.CANCELLED:
        return lifecycle.advance(
            lifecycle.request_cancel(build), end, now=t, reason=Reason.CANCELLED_BUILD
        )
    build = lifecycle.advance(build, Phase.PENDING, now=t)
    build = lifecycle.record_revision(build, REVISION)
    build = lifecycle.record_stage(
        build, Stage(name=StageName.FETCH_INPUTS, start_time=t, duration_ms=1200)
    )
    build = lifecycle.advance(build, Phase.RUNNING, now=t + timedelta(seconds=2))
    build = lifecycle.record_stage(
        build, Stage(name=StageName.BUILD, start_time=t + timedelta(seconds=2), duration_ms=40000)
    )
    done = t + timedelta(seconds=61)
    if end is Phase.COMPLETE:
        build = lifecycle.record_output(
            build, digest=DIGEST, image_reference="registry.example.com/team/app:latest"
        )
        return lifecycle.advance(build, end, now=done)
    build = lifecycle.record_log_snippet(build, "STEP 2/2: RUN false\nerror: exit status 1")
    reason = Reason.DOCKER_BUILD_FAILED if end is Phase.FAILED else Reason.BUILD_POD_DELETED
    return lifecycle.advance(build, end, now=done, reason=reason)


@pytest.mark.parametrize("end", [Phase.NEW, Phase.COMPLETE, Phase.FAILED, Phase.ERROR,
                                 Phase.CANCELLED])  # fmt: skip
@pytest.mark.parametrize("config_kind", ["docker-everything", "source", "custom"])
def test_builds_from_the_model_validate_without_pruning(config_kind: str, end: Phase) -> None:
    config = CONFIGS[config_kind]()
    for cause, request in requests_of_every_cause(config).items():
        if config_kind != "docker-everything" and cause == "image-change":
            continue  # those configs' ImageChange trigger has no strategy image to watch
        build = requests.instantiate(config, request, number=3, uid="uid-3", created=factories.T0)
        if end is not Phase.NEW:
            build = lived(build, end)
        found = problems(build_to_resource(build), SCHEMAS["Build"])
        assert found == [], (cause, found)


async def test_everything_the_store_writes_validates(kube: Any, apiserver: FakeApiServer) -> None:
    """The objects as the (fake) API server holds them after the store wrote them."""
    store = KubernetesStore(kube, NAMESPACE)
    config = dataclasses.replace(full_config(), last_version=4)
    await store.create_buildconfig(config)
    await store.create_buildconfig(factories.buildconfig("app", namespace=NAMESPACE))
    await store.replace_buildconfig(full_config(runPolicy="Parallel"))
    for cause, request in requests_of_every_cause(config).items():
        made = (await store.instantiate([new_build("full", request)])).builds[0]
        end = Phase.COMPLETE if cause in ("github", "image-change") else Phase.FAILED
        await store.update_build(lived(made, end))
    (plain,) = (await store.instantiate([new_build("app")])).builds
    await store.update_build(lived(plain, Phase.CANCELLED))
    # what triggerd says in the status of a config it cannot accept
    assert await store.report_buildconfig(NAMESPACE, "app", "spec.strategy.type: unsupported")
    stored = {
        "BuildConfig": apiserver.list(("triggerd.dev/v1", "buildconfigs"), NAMESPACE),
        "Build": apiserver.list(("triggerd.dev/v1", "builds"), NAMESPACE),
    }
    assert len(stored["BuildConfig"]) == 2 and len(stored["Build"]) == 7
    for kind, objects in stored.items():
        for doc in objects:
            assert problems(doc, SCHEMAS[kind]) == [], doc["metadata"]["name"]
    app = next(c for c in stored["BuildConfig"] if c["metadata"]["name"] == "app")
    assert app["status"]["conditions"][0]["status"] == "False"
    complete = next(b for b in stored["Build"] if b["status"]["phase"] == "Complete")
    assert complete["status"]["output"]["to"]["imageDigest"] == DIGEST
    assert complete["spec"]["revision"]["git"]["commit"] == COMMIT


# Examples -------------------------------------------------------------------------------------

EXAMPLES = sorted(
    [
        *(REPO / "config/examples").glob("*.yaml"),
        *(REPO / "config/buildconfigs").glob("*.yaml"),
        MANIFESTS / "examples/buildconfig.yaml",
        MANIFESTS / "examples/build.yaml",
    ]
)


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO)) for p in EXAMPLES])
def test_examples_validate_as_applied_and_after_triggerd_reads_them(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    kind = doc["kind"]
    assert problems(as_resource(doc), SCHEMAS[kind]) == []
    if kind == "BuildConfig":
        written = config_to_resource(buildconfigs.parse(as_resource(doc)))
    else:
        written = build_to_resource(builds.from_dict(doc))
    assert problems(written, SCHEMAS[kind]) == []


def test_the_openshift_export_keeps_every_field() -> None:
    """An `oc get bc -o yaml` export: nothing in it is unknown to the schema."""
    doc = yaml.safe_load((REPO / "config/examples/openshift-export.yaml").read_text())
    assert doc["spec"]["nodeSelector"] is None  # OpenShift writes null here
    assert problems(as_resource(doc), SCHEMAS["BuildConfig"]) == []


# Printer columns ------------------------------------------------------------------------------


def column_value(doc: dict[str, Any], json_path: str) -> Any:
    value: Any = doc
    for part in json_path.strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def schema_at(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    node = schema
    for part in json_path.strip(".").split("."):
        node = node["properties"][part]
    return node


@pytest.mark.parametrize("kind", ["BuildConfig", "Build"])
def test_printer_columns_read_declared_fields_of_the_right_type(kind: str) -> None:
    version = CRDS[kind]["spec"]["versions"][0]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        node = schema_at(SCHEMAS[kind], column["jsonPath"])
        expected = {"date": ("string", "date-time"), "string": ("string", None),
                    "integer": ("integer", "int64")}[column["type"]]  # fmt: skip
        assert (node["type"], node.get("format")) == expected, column


def test_kubectl_get_builds_shows_type_status_times_and_digest() -> None:
    version = CRDS["Build"]["spec"]["versions"][0]
    shown = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]
             if c.get("priority", 0) == 0}  # fmt: skip
    assert shown == {
        "Type": ".spec.strategy.type",
        "Status": ".status.phase",
        "Started": ".status.startTimestamp",
        "Duration": ".status.durationText",
        "Digest": ".status.output.to.imageDigest",
    }
    build = build_to_resource(lived(factories.build("app", 1), Phase.COMPLETE))
    values = {name: column_value(build, path) for name, path in shown.items()}
    assert values == {
        "Type": "Docker",
        "Status": "Complete",
        "Started": "2026-01-01T00:00:02Z",
        "Duration": "59s",
        "Digest": DIGEST,
    }


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (60, "1m0s"), (3723, "1h2m3s")]
)
def test_the_duration_column_reads_as_go_durations(seconds: int, text: str) -> None:
    assert metas.format_duration(seconds * 1_000_000_000 + 999_999_999) == text
