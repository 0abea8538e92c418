"""Bitbucket Cloud repo:push and Data Center repo:refs_changed deliveries into events."""

from __future__ import annotations

import pytest

from triggerd import matching
from triggerd.errors import MalformedPayload, UnsupportedEvent, UnsupportedMediaType
from triggerd.events import ZERO_SHA, Event, GitPush, Person, Ping, Provider, RefKind
from triggerd.intake import bitbucket

from .payloads import document, encode, raw

JSON = "application/json"
CLOUD = {"X-Event-Key": "repo:push", "X-Request-UUID": "fc7f3c05-2f3b-4b21-9e65-16a8d61b8a2e"}
SERVER = {
    "X-Event-Key": "repo:refs_changed",
    "X-Request-Id": "d6f8a2c4-3e43-4f4e-9e1f-f4a3bd9d5b1e",
}
NEW_HASH = "709d658dc5b6d6afcd46049c2f332ee3f515a67d"
OLD_HASH = "1e65c05c1d5171631d92438a13901ca7dae9618c"


def _pushes(headers: dict[str, str], name: str, body: bytes | None = None) -> list[GitPush]:
    events = bitbucket.parse_all(headers, raw(name) if body is None else body, JSON)
    assert all(isinstance(e, GitPush) for e in events)
    return [e for e in events if isinstance(e, GitPush)]


class TestCloud:
    def test_the_documented_push(self) -> None:
        [push] = _pushes(CLOUD, "bitbucket/cloud-repo-push.json")
        assert push.provider is Provider.BITBUCKET
        assert push.delivery_id == CLOUD["X-Request-UUID"]
        assert (push.ref, push.ref_kind, push.ref_name) == (
            "refs/heads/name-of-branch",
            RefKind.BRANCH,
            "name-of-branch",
        )
        assert (push.before, push.after) == (OLD_HASH, NEW_HASH)
        assert (push.created, push.deleted) == (False, False)
        assert push.repository_urls == (
            "https://api.bitbucket.org/bitbucket/bitbucket",
            "https://bitbucket.org/team_name/repo_name.git",
            "git@bitbucket.org:team_name/repo_name.git",
        )
        assert push.pusher == Person(name="Emma", email="")
        assert [c.id for c in push.commits] == ["03f4a7270240708834de475bcf21532d6134777e"]
        assert push.commits[0].author == Person(name="Emma", email="emma@example.com")
        # head_commit comes from new.target when commits[] does not list it
        assert push.head_commit is not None
        assert push.head_commit.id == NEW_HASH
        assert push.head_commit.message == "new commit message\n"

    def test_a_branch_creation_is_created(self) -> None:
        [push] = _pushes(CLOUD, "bitbucket/cloud-repo-push-branch-created.json")
        assert push.created and not push.deleted
        assert push.before is None and push.after == NEW_HASH
        assert push.ref == "refs/heads/feature/login" and push.ref_name == "feature/login"

    def test_created_without_the_flag_still_means_created(self) -> None:
        doc = document("bitbucket/cloud-repo-push-branch-created.json")
        del doc["push"]["changes"][0]["created"]
        [push] = _pushes(CLOUD, "", encode(doc))
        assert push.created

    def test_a_branch_deletion(self) -> None:
        [push] = _pushes(CLOUD, "bitbucket/cloud-repo-push-branch-deleted.json")
        assert push.deleted and not push.created
        assert push.after == ZERO_SHA and push.before == OLD_HASH
        assert push.ref_name == "name-of-branch" and push.head_commit is None

    def test_one_event_per_changed_ref_in_payload_order(self) -> None:
        name = "bitbucket/cloud-repo-push-branch-and-tag.json"
        branch, tag = _pushes(CLOUD, name)
        assert (branch.ref_kind, branch.ref_name) == (RefKind.BRANCH, "name-of-branch")
        assert (tag.ref, tag.ref_kind, tag.ref_name) == ("refs/tags/v1.2.0", RefKind.TAG, "v1.2.0")
        assert tag.created and tag.after == NEW_HASH
        assert bitbucket.parse(CLOUD, raw(name), JSON) == branch

    def test_mainbranch_is_the_default_branch(self) -> None:
        doc = document("bitbucket/cloud-repo-push.json")
        doc["repository"]["mainbranch"] = {"type": "branch", "name": "main"}
        [push] = _pushes(CLOUD, "", encode(doc))
        assert push.default_branch == "main"

    @pytest.mark.parametrize(
        ("edit", "error", "message"),
        [
            (
                {"type": "named_branch"},
                UnsupportedEvent,
                "push of a 'named_branch' is not supported",
            ),
            ({"name": 7}, MalformedPayload, r"push.changes\[0\].new.name must be a string"),
            ({"target": None}, MalformedPayload, r"field push.changes\[0\].new.target is missing"),
            ({"target": {"hash": "abc"}}, MalformedPayload, "new.target.hash must be a commit id"),
        ],
    )
    def test_bad_new_sides(
        self, edit: dict[str, object], error: type[Exception], message: str
    ) -> None:
        doc = document("bitbucket/cloud-repo-push.json")
        doc["push"]["changes"][0]["new"] |= edit
        with pytest.raises(error, match=message):
            bitbucket.parse(CLOUD, encode(doc), JSON)

    def test_a_change_with_neither_side(self) -> None:
        doc = document("bitbucket/cloud-repo-push.json")
        doc["push"]["changes"][0]["new"] = doc["push"]["changes"][0]["old"] = None
        with pytest.raises(MalformedPayload, match=r"push.changes\[0\] has neither new nor old"):
            bitbucket.parse(CLOUD, encode(doc), JSON)

    def test_no_changes(self) -> None:
        doc = document("bitbucket/cloud-repo-push.json")
        doc["push"]["changes"] = []
        with pytest.raises(MalformedPayload, match=r"push\.changes is empty"):
            bitbucket.parse_all(CLOUD, encode(doc), JSON)
        del doc["push"]
        with pytest.raises(MalformedPayload, match="field push is missing"):
            bitbucket.parse_all(CLOUD, encode(doc), JSON)


class TestServer:
    def test_the_documented_refs_changed(self) -> None:
        [push] = _pushes(SERVER, "bitbucket/server-repo-refs-changed.json")
        assert push.delivery_id == SERVER["X-Request-Id"]
        assert (push.ref, push.ref_kind, push.ref_name) == (
            "refs/heads/master",
            RefKind.BRANCH,
            "master",
        )
        assert push.before == "ecddabb624f6f5ba43816f5926e580a5f680a932"
        assert push.after == "178864a7d521b6f5e720b386b2c2b0ef8563e0dc"
        assert (push.created, push.deleted) == (False, False)
        assert push.pusher == Person(name="Administrator", email="admin@example.com")
        # the documented payload names no URL and no host: only the project key and slug
        assert push.repository_urls == ("/PROJ/repository",)
        assert bitbucket.path_candidates(push.repository_urls) == ("/PROJ/repository",)

    def test_add_update_delete_and_links(self) -> None:
        update, add, delete = _pushes(SERVER, "bitbucket/server-repo-refs-changed-with-links.json")
        assert update.repository_urls == (
            "ssh://git@bitbucket.example.com:7999/proj/repository.git",
            "https://bitbucket.example.com/scm/proj/repository.git",
            "https://bitbucket.example.com/projects/PROJ/repos/repository/browse",
            "/PROJ/repository",
        )
        assert not update.created and not update.deleted
        assert add.created and not add.deleted and add.ref_name == "feature"
        assert delete.deleted and not delete.created
        assert (delete.ref_kind, delete.ref_name, delete.after) == (RefKind.TAG, "v0.9", ZERO_SHA)

    def test_ref_id_falls_back_to_ref_object(self) -> None:
        doc = document("bitbucket/server-repo-refs-changed.json")
        del doc["changes"][0]["refId"]
        [push] = _pushes(SERVER, "", encode(doc))
        assert push.ref == "refs/heads/master"

    def test_bad_to_hash(self) -> None:
        doc = document("bitbucket/server-repo-refs-changed.json")
        doc["changes"][0]["toHash"] = None
        with pytest.raises(MalformedPayload, match=r"field changes\[0\].toHash is missing"):
            bitbucket.parse(SERVER, encode(doc), JSON)

    def test_ping(self) -> None:
        headers = {"X-Event-Key": "diagnostics:ping", "X-Request-Id": "p-1"}
        event: Event = bitbucket.parse(headers, b'{"test": true}', JSON)
        assert event == Ping(provider=Provider.BITBUCKET, delivery_id="p-1", repository_urls=())


class TestHeaders:
    @pytest.mark.parametrize("key", ["pullrequest:created", "repo:fork", "pr:merged"])
    def test_unsupported_events(self, key: str) -> None:
        with pytest.raises(UnsupportedEvent, match=f"Bitbucket event '{key}' is not supported"):
            bitbucket.parse({"X-Event-Key": key}, b"{}", JSON)

    def test_missing_event_key(self) -> None:
        with pytest.raises(MalformedPayload, match="header X-Event-Key is missing"):
            bitbucket.parse({}, raw("bitbucket/cloud-repo-push.json"), JSON)

    def test_content_type(self) -> None:
        with pytest.raises(UnsupportedMediaType):
            bitbucket.parse(CLOUD, raw("bitbucket/cloud-repo-push.json"), "text/xml")
        assert bitbucket.parse(
            {"x-event-key": "repo:push"},
            raw("bitbucket/cloud-repo-push.json"),
            "application/json; charset=UTF-8",
        )

    def test_delivery_id(self) -> None:
        assert bitbucket.delivery_id({"x-request-uuid": "a"}) == "a"
        assert bitbucket.delivery_id({"X-REQUEST-ID": "b"}) == "b"
        assert bitbucket.delivery_id({}) is None


class TestServerRepositoryPath:
    @pytest.mark.parametrize(
        "uri",
        [
            "https://bitbucket.example.com/scm/proj/repository.git",
            "ssh://git@bitbucket.example.com:7999/PROJ/repository.git",
            "https://git.internal/PROJ/Repository",
        ],
    )
    def test_suffix_matches_uri_forms(self, uri: str) -> None:
        normalized = matching.normalize_repo_url(uri)
        assert normalized is not None
        assert bitbucket.path_matches("/PROJ/repository", normalized)

    @pytest.mark.parametrize(
        "uri",
        [
            "https://bitbucket.example.com/scm/xproj/repository.git",
            "https://bitbucket.example.com/scm/proj/repository-2.git",
            "https://bitbucket.example.com/scm/other/repository.git",
        ],
    )
    def test_suffix_respects_path_segments(self, uri: str) -> None:
        normalized = matching.normalize_repo_url(uri)
        assert normalized is not None
        assert not bitbucket.path_matches("/PROJ/repository", normalized)

    def test_exact_url_matching_never_sees_the_path(self) -> None:
        assert matching.normalize_repo_url("/PROJ/repository") is None

    def test_no_path_without_key_or_slug(self) -> None:
        doc = document("bitbucket/server-repo-refs-changed.json")
        del doc["repository"]["project"]
        [push] = _pushes(SERVER, "", encode(doc))
        assert push.repository_urls == ()
        doc = document("bitbucket/server-repo-refs-changed.json")
        doc["repository"]["slug"] = "a/b"
        [push] = _pushes(SERVER, "", encode(doc))
        assert push.repository_urls == ()
