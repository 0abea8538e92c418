"""Property tests: whatever arrives, a parser returns events or raises a triggerd error.

The web layer maps MalformedPayload, UnsupportedEvent and UnsupportedMediaType to 400/415;
anything else escaping a parser would be a 500 and a crash report an attacker can trigger.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triggerd import intake
from triggerd.errors import MalformedPayload, UnsupportedEvent, UnsupportedMediaType
from triggerd.events import Event, GenericTrigger, GitPush, Ping, Provider, RefKind

from .payloads import document, fixtures

ALLOWED = (MalformedPayload, UnsupportedEvent, UnsupportedMediaType)
COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

EVENT_HEADERS: dict[Provider, tuple[str, list[str]]] = {
    Provider.GITHUB: ("X-GitHub-Event", ["push", "ping", "issues"]),
    Provider.GITLAB: ("X-Gitlab-Event", ["Push Hook", "Tag Push Hook", "System Hook", "Note Hook"]),
    Provider.BITBUCKET: (
        "X-Event-Key",
        ["repo:push", "repo:refs_changed", "diagnostics:ping", "pr:opened"],
    ),
    Provider.GENERIC: ("X-Delivery-ID", ["d-1"]),
}
CONTENT_TYPES = [
    "",
    "application/json",
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/yaml",
    "text/yaml",
    "text/plain",
]
HEADER_NAMES = [
    "X-GitHub-Event",
    "X-Gitea-Event",
    "X-Gogs-Event",
    "X-Forgejo-Event",
    "X-GitHub-Delivery",
    "X-Gitlab-Event",
    "X-Gitlab-Event-UUID",
    "X-Event-Key",
    "X-Request-UUID",
    "X-Request-Id",
    "X-Delivery-ID",
    "Idempotency-Key",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.sampled_from(["0" * 40, "a" * 40, "refs/heads/main", "refs/tags/v1", "refs/x", "branch"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def _headers(provider: Provider) -> st.SearchStrategy[dict[str, str]]:
    name, values = EVENT_HEADERS[provider]
    known = st.fixed_dictionaries({name: st.sampled_from(values) | st.text(max_size=30)})
    noise = st.dictionaries(
        st.sampled_from(HEADER_NAMES) | st.text(min_size=1, max_size=20),
        st.text(max_size=40),
        max_size=4,
    )
    return st.one_of(noise, st.tuples(noise, known).map(lambda pair: pair[0] | pair[1]))


def _check(event: Event) -> None:
    """Whatever a parser returns is well-formed, not merely non-crashing."""
    assert isinstance(event, GitPush | Ping | GenericTrigger)
    if isinstance(event, GitPush):
        assert COMMIT_ID.fullmatch(event.after)
        prefix = "refs/heads/" if event.ref_kind is RefKind.BRANCH else "refs/tags/"
        assert event.ref == prefix + event.ref_name and event.ref_name
        assert all(isinstance(url, str) and url for url in event.repository_urls)
        assert all(isinstance(c.id, str) for c in event.commits)
    if isinstance(event, GenericTrigger):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in event.env)


def _run(
    parse_all: Callable[[Mapping[str, str], bytes, str], tuple[Event, ...]],
    headers: Mapping[str, str],
    body: bytes,
    content_type: str,
) -> None:
    try:
        events = parse_all(headers, body, content_type)
    except ALLOWED as exc:
        assert str(exc)  # every refusal says why
        return
    assert events
    for event in events:
        _check(event)


@pytest.mark.parametrize("provider", list(Provider))
@given(data=st.data(), body=st.binary(max_size=300))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes(provider: Provider, data: st.DataObject, body: bytes) -> None:
    headers = data.draw(_headers(provider))
    content_type = data.draw(st.sampled_from(CONTENT_TYPES) | st.text(max_size=30))
    _run(intake.PARSERS[provider].parse_all, headers, body, content_type)


@pytest.mark.parametrize("provider", list(Provider))
@given(data=st.data(), value=json_values)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_json(provider: Provider, data: st.DataObject, value: object) -> None:
    name, values = EVENT_HEADERS[provider]
    headers = {name: data.draw(st.sampled_from(values))}
    _run(
        intake.PARSERS[provider].parse_all, headers, json.dumps(value).encode(), "application/json"
    )


@given(text=st.text(max_size=300))
def test_arbitrary_yaml_text(text: str) -> None:
    _run(intake.generic.parse_all, {}, text.encode("utf-8"), "application/yaml")


def _paths(value: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replace(doc: Any, path: tuple[str | int, ...], value: object) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


FIXTURE_EVENTS: dict[str, tuple[Provider, dict[str, str]]] = {}
for _name in fixtures("github"):
    FIXTURE_EVENTS[_name] = (
        Provider.GITHUB,
        {"X-GitHub-Event": "ping" if "ping" in _name else "push"},
    )
for _name in fixtures("gitlab"):
    _event = (
        "System Hook" if "system" in _name else "Tag Push Hook" if "tag" in _name else "Push Hook"
    )
    FIXTURE_EVENTS[_name] = (Provider.GITLAB, {"X-Gitlab-Event": _event})
for _name in fixtures("bitbucket"):
    _key = "repo:push" if "cloud" in _name else "repo:refs_changed"
    FIXTURE_EVENTS[_name] = (Provider.BITBUCKET, {"X-Event-Key": _key})
for _name in fixtures("generic"):
    FIXTURE_EVENTS[_name] = (Provider.GENERIC, {})


@pytest.mark.parametrize("name", sorted(FIXTURE_EVENTS))
@given(data=st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_one_field_of_a_real_payload_replaced(name: str, data: st.DataObject) -> None:
    provider, headers = FIXTURE_EVENTS[name]
    doc = document(name)
    path = data.draw(st.sampled_from(_paths(doc)))
    mutated = _replace(doc, path, data.draw(json_values))
    _run(
        intake.PARSERS[provider].parse_all,
        headers,
        json.dumps(mutated).encode(),
        "application/json",
    )


@pytest.mark.parametrize("name", sorted(FIXTURE_EVENTS))
def test_every_fixture_parses_cleanly(name: str) -> None:
    provider, headers = FIXTURE_EVENTS[name]
    for event in intake.parse_all(provider, headers, json.dumps(document(name)).encode(), ""):
        _check(event)
