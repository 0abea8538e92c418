"""OpenShift GenericWebHookEvent bodies (JSON, YAML, empty) into GenericTrigger."""

from __future__ import annotations

import json

import pytest
import yaml

from triggerd.errors import MalformedPayload, UnsupportedMediaType
from triggerd.events import GenericTrigger, Person
from triggerd.intake import generic
from triggerd.intake.generic import RawGenericWebHookEvent

from .payloads import encode, raw

JSON = "application/json"
EMPTY = GenericTrigger(
    delivery_id=None,
    ref=None,
    commit=None,
    author=None,
    committer=None,
    message=None,
    env=(),
    build_args=(),
    no_cache=None,
    repository_urls=(),
)


def _parse(body: bytes, content_type: str = JSON, **headers: str) -> GenericTrigger:
    event = generic.parse({k.replace("_", "-"): v for k, v in headers.items()}, body, content_type)
    assert isinstance(event, GenericTrigger)
    return event


def test_the_documented_yaml_payload() -> None:
    event = _parse(raw("generic/openshift-docs.yaml"), "application/yaml")
    assert event.repository_urls == ("<url to git repository>",)
    assert event.ref == "<optional git reference>"
    assert event.commit == "<commit hash identifying a specific git commit>"
    assert event.author == Person(name="<author name>", email="<author e-mail>")
    assert event.committer == Person(name="<committer name>", email="<committer e-mail>")
    assert event.message == "<commit message>"
    assert event.env == (("<variable name>", "<variable value>"),)
    assert event.build_args == () and event.no_cache is None


def test_the_json_and_yaml_forms_are_the_same_event() -> None:
    from_json = _parse(raw("generic/openshift-docs.json"))
    for content_type in (
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/yaml; charset=utf-8",
    ):
        assert _parse(raw("generic/openshift-docs.yaml"), content_type) == from_json


def test_json_is_yaml_too() -> None:
    assert _parse(raw("generic/openshift-docs.json"), "application/yaml") == _parse(
        raw("generic/openshift-docs.json")
    )


def test_strategy_options() -> None:
    event = _parse(raw("generic/with-strategy-options.yaml"), "application/x-yaml")
    assert event.build_args == (("HTTP_PROXY", "http://127.0.0.1:3128"),)
    assert event.no_cache is True
    assert event.env == (("GREETING", "hello"),)
    assert event.commit == "a17e2b7d0e8e6f74ac08f58a52a3ed71ba5c62f6"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", ""),
        (b"", JSON),
        (b"", "text/plain"),  # nothing to read, so nothing to refuse
        (b"  \n", "text/plain"),
        (b"null", JSON),
        (b"{}", JSON),
        (b"{}", ""),
        (b"{}", "application/yaml"),
    ],
)
def test_an_empty_request_is_valid(body: bytes, content_type: str) -> None:
    assert _parse(body, content_type) == EMPTY


def test_an_empty_yaml_document() -> None:
    assert _parse(b"---\n", "application/yaml") == EMPTY


def test_delivery_id_headers() -> None:
    assert _parse(b"", X_Delivery_ID="d-1").delivery_id == "d-1"
    assert _parse(b"", Idempotency_Key="k-1").delivery_id == "k-1"
    assert generic.delivery_id({"x-delivery-id": "d", "idempotency-key": "k"}) == "d"


class TestRefs:
    def test_post_receive_style_keeps_every_ref_in_order(self) -> None:
        event = _parse(raw("generic/post-receive-refs.json"))
        assert [(r.ref, r.message) for r in event.refs] == [
            ("refs/heads/main", "Merge branch 'feature'"),
            ("refs/heads/feature", "Add the feature"),
        ]
        # The first entry also fills the single-revision fields.
        assert event.ref == "refs/heads/main"
        assert event.commit == "5c61d4e1b1e2c5cb0f1e0f6c6c1b9e3d7a2f4b10"
        assert event.message == "Merge branch 'feature'"
        assert event.author == Person(name="Jane Doe", email="jane@example.com")
        # uri comes from the enclosing git object
        assert event.repository_urls == ("https://git.example.com/team/app.git",)

    def test_top_level_refs(self) -> None:
        body: RawGenericWebHookEvent = {"refs": [{"ref": "refs/tags/v2", "commit": "abc"}]}
        event = _parse(encode(body))
        assert (event.ref, event.commit) == ("refs/tags/v2", "abc")

    def test_git_ref_wins_over_refs(self) -> None:
        body: RawGenericWebHookEvent = {
            "git": {"ref": "main", "commit": "c1", "refs": [{"ref": "other", "commit": "c2"}]}
        }
        event = _parse(encode(body))
        assert (event.ref, event.commit) == ("main", "c1")
        assert event.refs == ()

    def test_every_ref_entry_is_checked(self) -> None:
        body = {"git": {"refs": [{"ref": "a"}, {"ref": "b", "commit": 5}]}}
        with pytest.raises(MalformedPayload, match=r"git.refs\[1\].commit must be a string"):
            _parse(encode(body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"env": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": 3, "value": "x"}]},
            r"env\[2\].name must be a string, not a number",
        ),
        ({"env": [{"value": "x"}]}, r"field env\[0\].name is missing"),
        ({"env": [{"name": ""}]}, r"env\[0\].name must not be empty"),
        ({"env": [{"name": "A", "value": 1}]}, r"env\[0\].value must be a string, not a number"),
        (
            {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {}}}]},
            r"env\[0\].valueFrom is not supported",
        ),
        ({"env": {"A": "1"}}, "env must be an array, not an object"),
        ({"env": ["A=1"]}, r"env\[0\] must be an object, not a string"),
        ({"git": "https://example.com/x.git"}, "git must be an object, not a string"),
        ({"git": {"uri": ["x"]}}, "git.uri must be a string, not an array"),
        ({"git": {"author": {"name": 1}}}, "git.author.name must be a string"),
        ({"git": {"committer": "me"}}, "git.committer must be an object"),
        ({"git": {"refs": {}}}, "git.refs must be an array"),
        (
            {"dockerStrategyOptions": {"noCache": "true"}},
            "dockerStrategyOptions.noCache must be a boolean",
        ),
        (
            {"dockerStrategyOptions": {"buildArgs": [{"name": "A", "value": False}]}},
            r"dockerStrategyOptions.buildArgs\[0\].value must be a string, not a boolean",
        ),
        ({"type": 1}, "type must be a string"),
        ([1, 2], r"body must be an object \(a GenericWebHookEvent\), not an array"),
        ("hello", "body must be an object"),
    ],
)
def test_wrong_types_name_the_field(body: object, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        _parse(json.dumps(body).encode())
    with pytest.raises(MalformedPayload, match=message):
        _parse(yaml.safe_dump(body).encode(), "application/yaml")


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{", JSON, "body is not valid JSON"),
        (b"git: [", "application/yaml", "body is not valid YAML: .* at line 1 column 7"),
        (b"a: 1\n---\nb: 2\n", "application/yaml", "body is not valid YAML"),
        (b"!!python/object:os.system {}", "application/yaml", "body is not valid YAML"),
        (b"git:\n  commit: 2024-13-45\n", "application/yaml", "body is not valid YAML"),
        (b"\xff\xfe\xfd", "application/yaml", "body is not valid YAML"),
        (b"\x00", "application/yaml", "body is not valid YAML"),
        (
            b"git:\n  commit: 2024-01-05\n",
            "application/yaml",
            "git.commit must be a string, not a date",
        ),
    ],
)
def test_unparseable_bodies(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        _parse(body, content_type)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_unknown_content_types_with_a_body(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="application/json or application/yaml"):
        _parse(b'{"env": []}', content_type)


def test_no_content_type_means_json() -> None:
    assert _parse(raw("generic/openshift-docs.json"), "") == _parse(
        raw("generic/openshift-docs.json")
    )


def test_parse_all_is_one_trigger() -> None:
    assert generic.parse_all({}, b"", "") == (EMPTY,)
    assert generic.EVENT_HEADER is None
