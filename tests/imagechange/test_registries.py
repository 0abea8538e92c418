"""Registry notification parsers: published payloads, ignored events, and fuzzing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggerd.errors import MalformedPayload, TriggerdError, UnsupportedMediaType
from triggerd.image_events import RegistryKind
from triggerd.intake import registries

DATA = Path(__file__).parent / "data"
DIST = "application/vnd.docker.distribution.events.v2+json"


def body(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_distribution_envelope_keeps_only_the_tagged_manifest_push() -> None:
    note = registries.parse(
        RegistryKind.DISTRIBUTION, {}, body("distribution-push-pretty.json"), DIST
    )
    (push,) = note.pushes
    assert note.ignored == 2  # the pull and the blob push
    assert push.registry == "192.168.100.227:5000"
    assert push.repository == "hello-world"
    assert push.tag == "latest"
    assert push.digest == (
        "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf"
    )
    assert push.key == "192.168.100.227:5000/hello-world:latest"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/vnd.docker.distribution.events.v1+json",
        "application/vnd.docker.distribution.events.v2+json; charset=utf-8",
        "application/json",
        "",
    ],
)
def test_distribution_media_types(content_type: str) -> None:
    note = registries.parse(
        RegistryKind.DISTRIBUTION, {}, body("distribution-push-pretty.json"), content_type
    )
    assert len(note.pushes) == 1


def test_untagged_child_manifests_are_ignored() -> None:
    event = {
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "1" * 64,
            "repository": "base",
        },
        "request": {"host": "127.0.0.1:5000"},
    }
    index = {
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": "sha256:" + "2" * 64,
            "repository": "base",
            "tag": "latest",
        },
        "request": {"host": "127.0.0.1:5000"},
    }
    raw = json.dumps({"events": [event, event, index, index]}).encode()
    note = registries.parse(RegistryKind.DISTRIBUTION, {}, raw, DIST)
    assert [p.digest for p in note.pushes] == ["sha256:" + "2" * 64]
    assert note.ignored == 3  # two children and one repeated index event


def test_distribution_without_events_is_malformed() -> None:
    with pytest.raises(MalformedPayload):
        registries.parse(RegistryKind.DISTRIBUTION, {}, b'{"event": []}', DIST)


def test_harbor_default_tagged_push() -> None:
    note = registries.parse(
        RegistryKind.HARBOR, {}, body("harbor-push-artifact-tagged.json"), "application/json"
    )
    (push,) = note.pushes
    assert (push.registry, push.repository, push.tag) == (
        "harbor.example.com",
        "harbor/alpine",
        "3.17",
    )
    assert push.digest == "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4"


def test_harbor_push_by_digest_is_ignored() -> None:
    note = registries.parse(
        RegistryKind.HARBOR, {}, body("harbor-push-artifact.json"), "application/json"
    )
    assert note.pushes == ()
    assert note.ignored == 1


def test_harbor_cloudevents() -> None:
    note = registries.parse(
        RegistryKind.HARBOR, {}, body("harbor-cloudevents-push.json"), "application/json"
    )
    (push,) = note.pushes
    assert push.key == "harbor.example.com/library/alpine:3.17"
    assert push.delivery_id == "4b2f89a5-2a0c-4bb8-8c3a-9a7f1f4c6b7e"


def test_harbor_pull_is_ignored() -> None:
    doc = json.loads(body("harbor-push-artifact-tagged.json"))
    doc["type"] = "PULL_ARTIFACT"
    note = registries.parse(RegistryKind.HARBOR, {}, json.dumps(doc).encode(), "application/json")
    assert note.pushes == ()


def test_dockerhub_has_no_digest() -> None:
    note = registries.parse(
        RegistryKind.DOCKERHUB, {}, body("dockerhub-push.json"), "application/json"
    )
    (push,) = note.pushes
    assert push.key == "docker.io/svendowideit/testhook:latest"
    assert push.digest is None


@pytest.mark.parametrize("name", ["quay-repo-push.json", "quay-repo-push-legacy-dict.json"])
def test_quay_updated_tags_as_list_or_dict(name: str) -> None:
    note = registries.parse(RegistryKind.QUAY, {}, body(name), "application/json")
    (push,) = note.pushes
    assert push.registry == "quay.io"
    assert push.tag == "latest"
    assert push.digest is None  # Quay's image ids are never taken for manifest digests


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("github-package-container-tagged.json", "package"),
        ("github-registry-package-container-tagged.json", "registry_package"),
    ],
)
def test_github_container_package(name: str, event: str) -> None:
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1"}
    note = registries.parse(RegistryKind.GITHUB, headers, body(name), "application/json")
    (push,) = note.pushes
    assert push.key == "ghcr.io/codertocat/hello-world:v1"
    assert push.digest == "sha256:3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498"
    assert push.delivery_id == "d-1"


@pytest.mark.parametrize(
    "name", ["github-package-container-untagged.json", "github-package-npm.json"]
)
def test_github_untagged_and_non_container_packages_are_ignored(name: str) -> None:
    headers = {"X-GitHub-Event": "package"}
    note = registries.parse(RegistryKind.GITHUB, headers, body(name), "application/json")
    assert note.pushes == ()
    assert note.ignored == 1


def test_github_package_type_is_case_insensitive() -> None:
    doc = json.loads(body("github-package-container-tagged.json"))
    doc["package"]["package_type"] = "Docker"
    note = registries.parse(
        RegistryKind.GITHUB, {"x-github-event": "package"}, json.dumps(doc).encode(), ""
    )
    assert len(note.pushes) == 1


def test_github_other_events_are_refused() -> None:
    with pytest.raises(MalformedPayload, match="X-GitHub-Event"):
        registries.parse(
            RegistryKind.GITHUB,
            {"X-GitHub-Event": "push"},
            body("github-package-npm.json"),
            "application/json",
        )


def test_wrong_media_type_is_refused() -> None:
    with pytest.raises(UnsupportedMediaType):
        registries.parse(RegistryKind.QUAY, {}, body("quay-repo-push.json"), "text/plain")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "events",
                    "action",
                    "target",
                    "tag",
                    "repository",
                    "request",
                    "host",
                    "digest",
                    "mediaType",
                    "url",
                    "type",
                    "event_data",
                    "data",
                    "resources",
                    "resource_url",
                    "push_data",
                    "repo_name",
                    "docker_url",
                    "updated_tags",
                    "package",
                    "registry_package",
                    "package_type",
                    "package_version",
                    "container_metadata",
                    "name",
                    "package_url",
                    "owner",
                    "login",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from([k for k in RegistryKind if k is not RegistryKind.POLL]),
    doc=JSON_VALUES,
    event=st.sampled_from(["package", "registry_package", "ping", "", "push"]),
)
def test_parsers_raise_only_triggerd_errors_on_any_json(
    kind: RegistryKind, doc: object, event: str
) -> None:
    try:
        note = registries.parse(
            kind, {"X-GitHub-Event": event}, json.dumps(doc).encode(), "application/json"
        )
    except TriggerdError:
        return
    for push in note.pushes:
        assert push.tag and push.repository and push.registry


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(list(registries.PARSERS)), raw=st.binary(max_size=200))
def test_parsers_raise_only_triggerd_errors_on_any_bytes(kind: RegistryKind, raw: bytes) -> None:
    with contextlib.suppress(TriggerdError):
        registries.parse(kind, {"X-GitHub-Event": "package"}, raw, "application/json")


@settings(max_examples=100, deadline=None)
@given(
    tag=st.text(max_size=12),
    repository=st.text(max_size=12),
    host=st.text(max_size=12),
    digest=st.text(max_size=20),
)
def test_distribution_fields_of_any_text(tag: str, repository: str, host: str, digest: str) -> None:
    raw = json.dumps(
        {
            "events": [
                {
                    "action": "push",
                    "target": {"repository": repository, "tag": tag, "digest": digest},
                    "request": {"host": host},
                }
            ]
        }
    ).encode()
    note = registries.parse(RegistryKind.DISTRIBUTION, {}, raw, DIST)
    assert len(note.pushes) + note.ignored == 1


CAPTURED_DIGEST = "sha256:0cc8c7b4478da345b29213b54b3c650a901f8f6a80730556764c8f54add0ebe2"
CAPTURED_TYPE = "application/vnd.docker.distribution.events.v1+json"


@pytest.mark.parametrize(
    "name", ["distribution-captured-blob-push-1.json", "distribution-captured-blob-push-2.json"]
)
def test_captured_blob_pushes_are_ignored(name: str) -> None:
    note = registries.parse(RegistryKind.DISTRIBUTION, {}, body(name), CAPTURED_TYPE)
    assert note.pushes == ()
    assert note.ignored == 1


def test_captured_manifest_push() -> None:
    note = registries.parse(
        RegistryKind.DISTRIBUTION,
        {},
        body("distribution-captured-manifest-push.json"),
        CAPTURED_TYPE,
    )
    (push,) = note.pushes
    assert push.key == "127.0.0.1:38713/team/base:latest"
    assert push.digest == CAPTURED_DIGEST
    assert push.media_type == "application/vnd.oci.image.manifest.v1+json"
