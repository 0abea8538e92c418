"""GitHub (and Gitea, Gogs, Forgejo) deliveries into neutral events."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from triggerd.errors import MalformedPayload, UnsupportedEvent, UnsupportedMediaType
from triggerd.events import ZERO_SHA, GitPush, Person, Ping, Provider, RefKind, changed_paths
from triggerd.intake import github

from .payloads import document, encode, fixtures, raw

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
HELLO_WORLD = (
    "https://github.com/Codertocat/Hello-World",
    "https://github.com/Codertocat/Hello-World.git",
    "git@github.com:Codertocat/Hello-World.git",
    "git://github.com/Codertocat/Hello-World.git",
)


def _headers(event: str = "push", **extra: str) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    } | {k.replace("_", "-"): v for k, v in extra.items()}


def _push(name: str, **headers: str) -> GitPush:
    event = github.parse(_headers(**headers), raw(name), JSON)
    assert isinstance(event, GitPush)
    return event


def test_a_branch_creation() -> None:
    push = _push("github/push-branch-created.json")
    assert push.provider is Provider.GITHUB
    assert push.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert push.ref == "refs/heads/master"
    assert push.ref_kind is RefKind.BRANCH
    assert push.ref_name == "master"
    assert push.before == ZERO_SHA
    assert push.after == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    assert (push.created, push.deleted) == (True, False)
    assert push.default_branch == "master"
    assert push.repository_urls == HELLO_WORLD
    assert push.pusher == Person(
        name="Codertocat", email="21031067+Codertocat@users.noreply.github.com"
    )
    assert push.head_commit is not None
    assert push.head_commit.id == push.after
    assert push.head_commit.message == "Initial commit"
    assert push.head_commit.added == ("README.md",)
    assert [c.id for c in push.commits] == [push.after]


def test_a_push_of_many_commits_builds_after_and_lists_every_path() -> None:
    push = _push("github/push-many-commits.json")
    assert (push.created, push.deleted) == (False, False)
    assert push.before == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    assert push.after == "1481a2de7b2a7d8ed3e9f0d6d2fc1a1a5ad0a5cb"
    assert push.ref_name == "main" and push.default_branch == "main"
    assert len(push.commits) == 4
    assert push.head_commit is not None and push.head_commit.id == push.after
    assert push.head_commit.message == "Tidy up"
    assert push.head_commit.removed == ("docs/old.md",)
    assert changed_paths(push) == {
        "docs/intro.md",
        "README.md",
        "src/app.py",
        "Dockerfile",
        "docs/old.md",
    }


def test_a_tag_creation() -> None:
    push = _push("github/push-tag-created.json")
    assert push.ref == "refs/tags/simple-tag"
    assert push.ref_kind is RefKind.TAG
    assert push.ref_name == "simple-tag"
    assert push.created and not push.deleted
    assert push.commits == ()
    # the tag points at an existing commit, which head_commit describes
    assert push.head_commit is not None
    assert push.head_commit.id == push.after == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


@pytest.mark.parametrize(
    ("name", "kind", "ref_name"),
    [
        ("github/push-tag-deleted.json", RefKind.TAG, "simple-tag"),
        ("github/push-tag-deleted-installation.json", RefKind.TAG, "simple-tag"),
        ("github/push-branch-deleted.json", RefKind.BRANCH, "feature-x"),
    ],
)
def test_a_deletion(name: str, kind: RefKind, ref_name: str) -> None:
    push = _push(name)
    assert push.deleted and not push.created
    assert push.after == ZERO_SHA
    assert push.before == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    assert (push.ref_kind, push.ref_name) == (kind, ref_name)
    assert push.head_commit is None and push.commits == ()


@pytest.mark.parametrize(
    ("name", "urls"),
    [
        ("github/ping-repository.json", 4),
        ("github/ping-app.json", 4),
        ("github/ping-organization.json", 0),
    ],
)
def test_ping(name: str, urls: int) -> None:
    event = github.parse(_headers("ping"), raw(name), JSON)
    assert isinstance(event, Ping)
    assert event.provider is Provider.GITHUB
    assert event.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert len(event.repository_urls) == urls


@pytest.mark.parametrize("name", fixtures("github"))
def test_parse_all_is_one_event_equal_to_parse(name: str) -> None:
    event = "ping" if "ping" in name else "push"
    events = github.parse_all(_headers(event), raw(name), JSON)
    assert events == (github.parse(_headers(event), raw(name), JSON),)


class TestFormEncoding:
    def test_a_form_encoded_push_equals_the_json_one(self) -> None:
        body = raw("github/push-many-commits.json")
        form = urlencode({"payload": body.decode()}).encode()
        assert github.parse(_headers(), form, FORM) == github.parse(_headers(), body, JSON)

    def test_a_form_encoded_ping(self) -> None:
        form = urlencode({"payload": raw("github/ping-repository.json").decode()}).encode()
        assert isinstance(github.parse(_headers("ping"), form, f"{FORM}; charset=utf-8"), Ping)

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"", "form body has no payload field"),
            (b"other=1", "form body has no payload field"),
            (b"payload=1&payload=2", "form body has 2 payload fields"),
            (b"payload=%7B", "payload is not valid JSON"),
            (b"payload=%FF", "form body could not be decoded"),
            (b"\xff", "form body could not be decoded"),
        ],
    )
    def test_bad_form_bodies(self, body: bytes, message: str) -> None:
        with pytest.raises(MalformedPayload, match=message):
            github.parse(_headers(), body, FORM)


class TestHeaders:
    def test_header_names_are_case_insensitive(self) -> None:
        headers = {"x-github-event": "push", "X-GITHUB-DELIVERY": "abc"}
        push = github.parse(headers, raw("github/push-tag-created.json"), JSON)
        assert isinstance(push, GitPush) and push.delivery_id == "abc"

    def test_a_missing_event_header_names_the_header(self) -> None:
        with pytest.raises(MalformedPayload, match="header X-GitHub-Event is missing"):
            github.parse({}, raw("github/push-tag-created.json"), JSON)

    def test_delivery_id_is_optional(self) -> None:
        push = github.parse({"X-GitHub-Event": "push"}, raw("github/push-tag-created.json"), JSON)
        assert isinstance(push, GitPush) and push.delivery_id is None
        assert github.delivery_id({"x-github-delivery": " d-1 "}) == "d-1"
        assert github.delivery_id({}) is None

    @pytest.mark.parametrize(
        ("event", "message"),
        [
            ("issues", "GitHub event 'issues' is not supported; supported: push, ping"),
            ("create", "GitHub event 'create' is not supported"),
            ("pull_request", "GitHub event 'pull_request' is not supported"),
        ],
    )
    def test_unsupported_events_are_named(self, event: str, message: str) -> None:
        with pytest.raises(UnsupportedEvent) as exc:
            github.parse(_headers(event), b"{}", JSON)
        assert message in str(exc.value)

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x"]
    )
    def test_unknown_content_types(self, content_type: str) -> None:
        with pytest.raises(UnsupportedMediaType, match="application/json"):
            github.parse(_headers(), raw("github/push-tag-created.json"), content_type)

    @pytest.mark.parametrize(
        "content_type", ["", "application/json; charset=utf-8", "APPLICATION/JSON"]
    )
    def test_json_content_type_variants(self, content_type: str) -> None:
        assert isinstance(
            github.parse(_headers(), raw("github/push-tag-created.json"), content_type), GitPush
        )


class TestGiteaFamily:
    def _gitea_push(self) -> dict[str, Any]:
        # Gitea's push shape: GitHub's fields without created/deleted, a Gitea-style pusher.
        doc = document("github/push-many-commits.json")
        del doc["created"], doc["deleted"]
        doc["pusher"] = {
            "id": 1,
            "login": "gitea",
            "full_name": "",
            "email": "gitea@example.com",
            "username": "gitea",
        }
        return doc

    @pytest.mark.parametrize(
        ("event_header", "delivery_header"),
        [
            ("X-Gitea-Event", "X-Gitea-Delivery"),
            ("X-Gogs-Event", "X-Gogs-Delivery"),
            ("X-Forgejo-Event", "X-Forgejo-Delivery"),
        ],
    )
    def test_their_headers(self, event_header: str, delivery_header: str) -> None:
        headers = {event_header: "push", delivery_header: "d-42"}
        push = github.parse(headers, encode(self._gitea_push()), JSON)
        assert isinstance(push, GitPush)
        assert push.provider is Provider.GITHUB
        assert push.delivery_id == "d-42"
        assert push.pusher == Person(name="gitea", email="gitea@example.com")

    def test_created_and_deleted_come_from_zero_ids_without_flags(self) -> None:
        doc = self._gitea_push()
        doc["before"] = ZERO_SHA
        push = github.parse({"X-Gitea-Event": "push"}, encode(doc), JSON)
        assert isinstance(push, GitPush) and push.created and not push.deleted
        doc["before"], doc["after"], doc["commits"], doc["head_commit"] = (
            doc["after"],
            ZERO_SHA,
            [],
            None,
        )
        push = github.parse({"X-Gitea-Event": "push"}, encode(doc), JSON)
        assert isinstance(push, GitPush) and push.deleted and not push.created

    def test_unsupported_event_names_the_dialect(self) -> None:
        with pytest.raises(UnsupportedEvent, match="Gitea event 'issues' is not supported"):
            github.parse({"X-Gitea-Event": "issues"}, b"{}", JSON)

    def test_head_commit_falls_back_to_the_listed_commit(self) -> None:
        doc = self._gitea_push()
        del doc["head_commit"]
        push = github.parse({"X-Gogs-Event": "push"}, encode(doc), JSON)
        assert isinstance(push, GitPush)
        assert push.head_commit is not None and push.head_commit.message == "Tidy up"


def _edited(path: str, value: object) -> bytes:
    doc = document("github/push-many-commits.json")
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return encode(doc)


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("ref", _DELETE, "field ref is missing"),
        ("ref", 5, "ref must be a string, not a number"),
        ("ref", "refs/heads/", "names no branch or tag"),
        ("after", _DELETE, "field after is missing"),
        ("after", "main", "after must be a commit id"),
        ("repository", _DELETE, "field repository is missing"),
        ("repository", [], "repository must be an object, not an array"),
        ("repository.html_url", None, None),
        ("commits", {}, "commits must be an array, not an object"),
        ("commits.1", "abc", r"commits\[1\] must be an object, not a string"),
        ("commits.2.id", None, r"field commits\[2\].id is missing"),
        ("commits.0.added", ["ok", 3], r"commits\[0\].added\[1\] must be a string"),
        ("commits.0.author", "me", r"commits\[0\].author must be an object"),
        ("head_commit.message", True, "head_commit.message must be a string, not a boolean"),
        ("created", "yes", "created must be a boolean, not a string"),
        ("pusher", 1, "pusher must be an object"),
    ],
)
def test_field_errors_name_the_path(path: str, value: object, message: str | None) -> None:
    body = _edited(path, value)
    if message is None:
        assert isinstance(github.parse(_headers(), body, JSON), GitPush)
        return
    with pytest.raises(MalformedPayload, match=message):
        github.parse(_headers(), body, JSON)


def test_a_repository_without_any_url_is_malformed() -> None:
    doc = document("github/push-many-commits.json")
    for key in ("html_url", "clone_url", "ssh_url", "git_url"):
        del doc["repository"][key]
    with pytest.raises(MalformedPayload, match=r"field repository\.clone_url is missing"):
        github.parse(_headers(), encode(doc), JSON)


def test_a_push_to_another_ref_namespace_is_unsupported() -> None:
    with pytest.raises(UnsupportedEvent, match="'refs/notes/commits' is not supported"):
        github.parse(_headers(), _edited("ref", "refs/notes/commits"), JSON)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is not valid JSON: Expecting value at line 1 column 1"),
        (b"{", "body is not valid JSON"),
        (b"[]", "body must be a JSON object, not an array"),
        (b"null", "body must be a JSON object, not null"),
        (b"\xff\xfe\x00", "body is not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_bodies_that_are_not_json_objects(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        github.parse(_headers(), body, JSON)
