"""GitLab Push Hook, Tag Push Hook and System Hook deliveries into neutral events."""

from __future__ import annotations

import pytest

from triggerd.errors import MalformedPayload, UnsupportedEvent, UnsupportedMediaType
from triggerd.events import ZERO_SHA, GitPush, Person, Provider, RefKind, changed_paths
from triggerd.intake import gitlab

from .payloads import document, encode, fixtures, raw

JSON = "application/json"
DIASPORA = (
    "http://example.com/mike/diaspora.git",
    "git@example.com:mike/diaspora.git",
    "http://example.com/mike/diaspora",
)


def _push(name: str, event: str = "Push Hook", body: bytes | None = None) -> GitPush:
    headers = {
        "X-Gitlab-Event": event,
        "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
    }
    result = gitlab.parse(headers, raw(name) if body is None else body, JSON)
    assert isinstance(result, GitPush)
    return result


def test_the_documented_push_hook() -> None:
    push = _push("gitlab/push-hook.json")
    assert push.provider is Provider.GITLAB
    assert push.delivery_id == "13792a34-cac6-4fda-95a8-c58e00a3954e"
    assert (push.ref, push.ref_kind, push.ref_name) == (
        "refs/heads/master",
        RefKind.BRANCH,
        "master",
    )
    assert push.before == "95790bf891e76fee5e1747ab589903a6a1f80f22"
    assert push.after == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert (push.created, push.deleted) == (False, False)
    assert push.default_branch == "master"
    assert push.repository_urls == DIASPORA
    assert push.pusher == Person(name="John Smith", email="john@example.com")
    assert [c.id[:7] for c in push.commits] == ["b6568db", "da15608"]
    assert push.head_commit is not None and push.head_commit.message == "fixed readme"
    assert push.head_commit.author == Person(
        name="GitLab dev user", email="gitlabdev@dv6700.(none)"
    )
    assert changed_paths(push) == {"CHANGELOG", "app/controller/application.rb"}


@pytest.mark.parametrize(
    ("name", "event"),
    [
        ("gitlab/push-hook-commits-out-of-order.json", "Push Hook"),
        ("gitlab/system-hook-push.json", "System Hook"),
    ],
)
def test_builds_checkout_sha_not_the_last_listed_commit(name: str, event: str) -> None:
    doc = document(name)
    assert doc["commits"][-1]["id"] != doc["checkout_sha"]  # the fixture's point
    push = _push(name, event)
    assert push.after == doc["checkout_sha"] == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    assert push.commits[-1].id != push.after


def test_an_annotated_tag_builds_the_commit_not_the_tag_object() -> None:
    push = _push("gitlab/system-hook-tag-push.json", "System Hook")
    assert push.ref_kind is RefKind.TAG and push.ref_name == "v1.0.0"
    assert push.after == "5937ac0a7beb003549fc5fd26fc247adbce4a52e"  # checkout_sha
    assert push.created and not push.deleted


def test_the_documented_tag_push_hook() -> None:
    push = _push("gitlab/tag-push-hook.json", "Tag Push Hook")
    assert (push.ref, push.ref_kind, push.ref_name) == ("refs/tags/v1.0.0", RefKind.TAG, "v1.0.0")
    assert push.after == "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"
    assert push.created and not push.deleted
    assert push.commits == () and push.head_commit is None
    assert push.pusher == Person(name="John Smith", email="")
    assert "ssh://git@example.com/jsmith/example.git" in push.repository_urls


def test_a_branch_deletion_has_a_null_checkout_sha() -> None:
    push = _push("gitlab/push-hook-branch-deleted.json")
    assert push.deleted and not push.created
    assert push.after == ZERO_SHA
    assert push.ref_name == "feature"


def test_after_is_used_only_when_checkout_sha_is_absent() -> None:
    doc = document("gitlab/push-hook.json")
    del doc["checkout_sha"]
    doc["after"] = "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327"
    assert _push("gitlab/push-hook.json", body=encode(doc)).after == doc["after"]


def test_system_hook_with_object_kind() -> None:
    doc = document("gitlab/push-hook.json")  # newer system hooks also send object_kind
    assert _push("", "System Hook", encode(doc)).after == doc["checkout_sha"]


@pytest.mark.parametrize("name", fixtures("gitlab"))
def test_parse_all_is_one_event(name: str) -> None:
    event = "System Hook" if "system" in name else "Tag Push Hook" if "tag" in name else "Push Hook"
    headers = {"X-Gitlab-Event": event}
    assert gitlab.parse_all(headers, raw(name), JSON) == (gitlab.parse(headers, raw(name), JSON),)


class TestEvents:
    @pytest.mark.parametrize(
        ("event", "message"),
        [
            ("Merge Request Hook", "GitLab event 'Merge Request Hook' is not supported"),
            ("Issue Hook", "supported: Push Hook, Tag Push Hook, System Hook"),
            ("push", "GitLab event 'push' is not supported"),
        ],
    )
    def test_unsupported_events(self, event: str, message: str) -> None:
        with pytest.raises(UnsupportedEvent, match=message):
            gitlab.parse({"X-Gitlab-Event": event}, raw("gitlab/push-hook.json"), JSON)

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (
                b'{"event_name": "project_create"}',
                "system hook event 'project_create' is not supported",
            ),
            (b'{"object_kind": "merge_request"}', "'merge_request' is not supported"),
        ],
    )
    def test_system_hooks_other_than_pushes(self, body: bytes, message: str) -> None:
        with pytest.raises(UnsupportedEvent, match=message):
            gitlab.parse({"X-Gitlab-Event": "System Hook"}, body, JSON)

    def test_a_system_hook_without_a_kind(self) -> None:
        with pytest.raises(MalformedPayload, match="field object_kind is missing"):
            gitlab.parse({"X-Gitlab-Event": "System Hook"}, b"{}", JSON)

    def test_missing_event_header(self) -> None:
        with pytest.raises(MalformedPayload, match="header X-Gitlab-Event is missing"):
            gitlab.parse({"X-Gitlab-Token": "t"}, raw("gitlab/push-hook.json"), JSON)

    def test_delivery_id(self) -> None:
        assert gitlab.delivery_id({"x-gitlab-event-uuid": "u-1"}) == "u-1"
        assert gitlab.delivery_id({"Idempotency-Key": "k-1"}) == "k-1"
        assert gitlab.delivery_id({}) is None

    def test_form_bodies_are_not_accepted(self) -> None:
        with pytest.raises(UnsupportedMediaType):
            gitlab.parse(
                {"X-Gitlab-Event": "Push Hook"}, b"a=b", "application/x-www-form-urlencoded"
            )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"checkout_sha": 12}, "checkout_sha must be a string, not a number"),
        ({"checkout_sha": "HEAD"}, "checkout_sha must be a commit id"),
        ({"ref": None}, "field ref is missing"),
        ({"project": None, "repository": None}, "field project is missing"),
        ({"project": "diaspora"}, "project must be an object, not a string"),
        ({"commits": [{"message": "x"}]}, r"field commits\[0\].id is missing"),
        ({"commits": [{"id": "a", "removed": "x"}]}, r"commits\[0\].removed must be an array"),
        ({"user_name": ["a"]}, "user_name must be a string, not an array"),
    ],
)
def test_field_errors_name_the_path(edit: dict[str, object], message: str) -> None:
    doc = document("gitlab/push-hook.json") | edit
    with pytest.raises(MalformedPayload, match=message):
        gitlab.parse({"X-Gitlab-Event": "Push Hook"}, encode(doc), JSON)


def test_a_push_without_any_url_is_malformed() -> None:
    doc = document("gitlab/push-hook.json")
    doc["project"] = {"name": "x"}
    doc["repository"] = {"name": "x"}
    with pytest.raises(MalformedPayload, match=r"project\.git_http_url is missing"):
        gitlab.parse({"X-Gitlab-Event": "Push Hook"}, encode(doc), JSON)
