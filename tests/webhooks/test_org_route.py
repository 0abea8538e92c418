"""Org-wide ``/hooks/{provider}``: fan-out to every BuildConfig of the repository whose own
trigger secret verifies the delivery, and one 401 for every way verification can fail."""

from __future__ import annotations

import hashlib
import hmac

from tests.intake.payloads import raw
from tests.webhooks.conftest import (
    CLOUD_URI,
    GITHUB_URI,
    GITLAB_URI,
    JSON,
    NS,
    OTHER_SECRET,
    REF_SECRET,
    SECRET,
    SERVER_URI,
    Hooks,
    github_headers,
    status_of,
    trigger,
)
from triggerd.intake import signatures
from triggerd.web import webhooks

PUSH = raw("github/push-many-commits.json")
PUSH_AFTER = "1481a2de7b2a7d8ed3e9f0d6d2fc1a1a5ad0a5cb"
SERVER_AFTER = "178864a7d521b6f5e720b386b2c2b0ef8563e0dc"


def _names(reply_body: dict[str, object]) -> list[str]:
    triggered = reply_body["triggered"]
    assert isinstance(triggered, list)
    return sorted(entry["buildConfig"] for entry in triggered)


async def test_fan_out_only_to_configs_whose_secret_verified(hooks: Hooks) -> None:
    await hooks.add_config("https-form", triggers=[trigger("GitHub")])
    await hooks.add_config(
        "ssh-form", uri="git@github.com:Codertocat/Hello-World.git", triggers=[trigger("GitHub")]
    )
    await hooks.add_config("other-team", triggers=[trigger("GitHub", OTHER_SECRET)])
    await hooks.add_config("gitlab-trigger", triggers=[trigger("GitLab")])
    await hooks.add_config(
        "other-repo", uri="https://github.com/Codertocat/Other.git", triggers=[trigger("GitHub")]
    )
    await hooks.add_config("team-b", namespace="team-b", triggers=[trigger("GitHub")])
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, delivery="fan"))
    assert reply.status == 201, reply.text
    assert _names(reply.body) == ["https-form", "ssh-form", "team-b"]
    assert {e["revision"] for e in reply.body["triggered"]} == {PUSH_AFTER}
    assert {e["namespace"] for e in reply.body["triggered"]} == {NS, "team-b"}
    assert reply.body["delivery"] == "fan"
    assert len(await hooks.builds()) == 3

    # The other team's secret starts only the other team's build.
    reply = await hooks.post(
        "/hooks/github", PUSH, github_headers(PUSH, delivery="other", secret=OTHER_SECRET)
    )
    assert reply.status == 201, reply.text
    assert _names(reply.body) == ["other-team"]


async def test_every_refusal_answers_the_same_401(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    unsigned = github_headers(PUSH, secret=None)
    sha1_only = {
        **unsigned,
        "X-Hub-Signature": "sha1=" + hmac.new(SECRET.encode(), PUSH, hashlib.sha1).hexdigest(),
    }
    other_repo = PUSH.replace(b"Codertocat/Hello-World", b"Codertocat/Unknown")
    cases = [
        (PUSH, unsigned),
        (PUSH, sha1_only),
        (PUSH, github_headers(PUSH, secret=OTHER_SECRET)),
        (PUSH, {**unsigned, "X-Hub-Signature-256": "sha256=" + "0" * 64}),
        (PUSH, {**unsigned, "X-Hub-Signature-256": "garbage"}),
        (PUSH + b" ", github_headers(PUSH)),  # signature of another body
        (other_repo, github_headers(other_repo)),  # no BuildConfig builds that repository
    ]
    texts = set()
    for body, headers in cases:
        reply = await hooks.post("/hooks/github", body, headers)
        assert reply.status == 401, reply.text
        status_of(reply.body, 401, "Unauthorized")
        assert reply.body["message"] == webhooks.UNAUTHORIZED
        texts.add(reply.text)
    assert len(texts) == 1
    assert await hooks.builds() == []


async def test_per_config_reasons_with_several_candidates(hooks: Hooks) -> None:
    await hooks.add_config("main", triggers=[trigger("GitHub")])
    await hooks.add_config("release", ref="release", triggers=[trigger("GitHub")])
    await hooks.add_config("paused", paused=True, triggers=[trigger("GitHub")])
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH))
    assert reply.status == 201, reply.text
    assert _names(reply.body) == ["main"]
    skipped = {s["buildConfig"]: s["reason"] for s in reply.body["skipped"]}
    assert skipped == {
        "paused": "buildconfig paused is paused",
        "release": "branch main does not match the config's ref release",
    }

    body = raw("github/push-branch-deleted.json")
    reply = await hooks.post("/hooks/github", body, github_headers(body))
    assert reply.status == 200, reply.text
    assert reply.body["triggered"] == []
    assert len(reply.body["skipped"]) == 3
    for name in ("main", "release"):
        assert (
            f"default/{name} (refs/heads/feature-x): branch feature-x was deleted"
            in (reply.body["reason"])
        )
    assert (
        "default/paused (refs/heads/feature-x): buildconfig paused is paused"
        in (reply.body["reason"])
    )


async def test_form_encoded_github_delivery(hooks: Hooks) -> None:
    from urllib.parse import urlencode

    await hooks.add_config(triggers=[trigger("GitHub")])
    form = urlencode({"payload": PUSH.decode()}).encode()
    headers = github_headers(form, content_type="application/x-www-form-urlencoded")
    reply = await hooks.post("/hooks/github", form, headers)
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] == PUSH_AFTER
    # The signature covers the raw form body, not the JSON inside it.
    wrong = github_headers(PUSH, content_type="application/x-www-form-urlencoded")
    assert (await hooks.post("/hooks/github", form, wrong)).status == 401


async def test_secret_reference_on_the_org_route(hooks: Hooks) -> None:
    hook = {"type": "GitHub", "github": {"secretReference": {"name": "hook-secret"}}}
    await hooks.add_config(triggers=[hook])
    missing = {"type": "GitHub", "github": {"secretReference": {"name": "not-configured"}}}
    await hooks.add_config("dangling", triggers=[missing])
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, secret=REF_SECRET))
    assert reply.status == 201, reply.text
    assert _names(reply.body) == ["app"]


async def test_github_ping_names_the_configs_it_would_route_to(hooks: Hooks) -> None:
    await hooks.add_config(
        "a", uri="https://github.com/Octocoders/Hello-World", triggers=[trigger("GitHub")]
    )
    await hooks.add_config(
        "b",
        uri="https://github.com/Octocoders/Hello-World",
        triggers=[trigger("GitHub", OTHER_SECRET)],
    )
    body = raw("github/ping-repository.json")
    reply = await hooks.post("/hooks/github", body, github_headers(body, event="ping"))
    assert reply.status == 200, reply.text
    assert reply.body["ping"] is True
    assert reply.body["buildConfigs"] == [{"namespace": NS, "name": "a"}]
    unsigned = await hooks.post(
        "/hooks/github", body, github_headers(body, event="ping", secret=None)
    )
    assert unsigned.status == 401
    assert await hooks.builds() == []


async def test_organization_ping_without_repository(hooks: Hooks) -> None:
    await hooks.add_config("a", triggers=[trigger("GitHub")])
    await hooks.add_config("b", uri="https://github.com/x/y", triggers=[trigger("GitHub")])
    await hooks.add_config("c", triggers=[trigger("GitHub", OTHER_SECRET)])
    body = raw("github/ping-organization.json")
    reply = await hooks.post("/hooks/github", body, github_headers(body, event="ping"))
    assert reply.status == 200, reply.text
    assert [c["name"] for c in reply.body["buildConfigs"]] == ["a", "b"]


# GitLab ------------------------------------------------------------------------------------------
async def test_gitlab_token(hooks: Hooks) -> None:
    await hooks.add_config(uri=GITLAB_URI, ref="master", triggers=[trigger("GitLab")])
    body = raw("gitlab/push-hook.json")
    headers = {"X-Gitlab-Event": "Push Hook", "Content-Type": JSON}
    for token, status in [
        (None, 401),
        ("", 401),
        ("wrong", 401),
        (SECRET + "x", 401),
        (SECRET[:-1], 401),
    ]:
        sent = headers if token is None else {**headers, "X-Gitlab-Token": token}
        reply = await hooks.post("/hooks/gitlab", body, sent)
        assert reply.status == status, (token, reply.text)
    reply = await hooks.post("/hooks/gitlab", body, {**headers, "X-Gitlab-Token": SECRET})
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"


async def test_gitlab_tag_push(hooks: Hooks) -> None:
    await hooks.add_config(
        uri="http://example.com/jsmith/example.git", triggers=[trigger("GitLab", tags=["v*"])]
    )
    body = raw("gitlab/tag-push-hook.json")
    headers = {"X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Token": SECRET, "Content-Type": JSON}
    reply = await hooks.post("/hooks/gitlab", body, headers)
    assert reply.status == 201, reply.text


# Bitbucket ---------------------------------------------------------------------------------------
CLOUD_HEADERS = {"X-Event-Key": "repo:push", "Content-Type": JSON}


async def test_bitbucket_cloud_needs_the_secret_in_the_query(hooks: Hooks) -> None:
    await hooks.add_config(uri=CLOUD_URI, ref="name-of-branch", triggers=[trigger("Bitbucket")])
    body = raw("bitbucket/cloud-repo-push.json")
    for params in (None, {"secret": ""}, {"secret": "wrong"}, {"secret": OTHER_SECRET}):
        reply = await hooks.post("/hooks/bitbucket", body, CLOUD_HEADERS, params=params)
        assert reply.status == 401, (params, reply.text)
    reply = await hooks.post("/hooks/bitbucket", body, CLOUD_HEADERS, params={"secret": SECRET})
    assert reply.status == 201, reply.text
    # A Cloud hook configured with a secret signs; that is verified instead.
    signed = {**CLOUD_HEADERS, "X-Hub-Signature": signatures.sign_github(body, SECRET)}
    reply = await hooks.post("/hooks/bitbucket", body, signed)
    assert reply.status == 201, reply.text


async def test_bitbucket_cloud_branch_and_tag_in_one_push(hooks: Hooks) -> None:
    await hooks.add_config(
        uri=CLOUD_URI,
        ref="name-of-branch",
        triggers=[trigger("Bitbucket", branches=["name-of-*"], tags=["v*"])],
    )
    body = raw("bitbucket/cloud-repo-push-branch-and-tag.json")
    reply = await hooks.post("/hooks/bitbucket", body, CLOUD_HEADERS, params={"secret": SECRET})
    assert reply.status == 201, reply.text
    assert [e["name"] for e in reply.body["triggered"]] == ["app-1", "app-2"]


def _server_headers(body: bytes, secret: str | None = SECRET) -> dict[str, str]:
    headers = {
        "X-Event-Key": "repo:refs_changed",
        "X-Request-Id": "server-delivery",
        "Content-Type": JSON,
    }
    if secret is not None:
        headers["X-Hub-Signature"] = signatures.sign_github(body, secret)
    return headers


async def test_bitbucket_data_center_matched_by_project_key_and_slug(hooks: Hooks) -> None:
    await hooks.add_config("scm", uri=SERVER_URI, ref="master", triggers=[trigger("Bitbucket")])
    await hooks.add_config(
        "ssh",
        uri="ssh://git@bitbucket.internal:7999/PROJ/Repository.git",
        ref="master",
        triggers=[trigger("Bitbucket")],
    )
    await hooks.add_config(
        "not-this-one",
        uri="https://bitbucket.example.com/scm/proj/repository-2.git",
        ref="master",
        triggers=[trigger("Bitbucket")],
    )
    body = raw("bitbucket/server-repo-refs-changed.json")
    for secret in (None, OTHER_SECRET):
        reply = await hooks.post("/hooks/bitbucket", body, _server_headers(body, secret))
        assert reply.status == 401, reply.text
    # The query secret is Cloud's way; Data Center must sign.
    reply = await hooks.post(
        "/hooks/bitbucket", body, _server_headers(body, None), params={"secret": SECRET}
    )
    assert reply.status == 401
    reply = await hooks.post("/hooks/bitbucket", body, _server_headers(body))
    assert reply.status == 201, reply.text
    assert _names(reply.body) == ["scm", "ssh"]
    assert {e["revision"] for e in reply.body["triggered"]} == {SERVER_AFTER}


async def test_bitbucket_data_center_with_links(hooks: Hooks) -> None:
    await hooks.add_config(
        uri=SERVER_URI, ref="master", triggers=[trigger("Bitbucket", branches=["*"])]
    )
    body = raw("bitbucket/server-repo-refs-changed-with-links.json")
    reply = await hooks.post("/hooks/bitbucket", body, _server_headers(body))
    assert reply.status == 201, reply.text
    assert len(reply.body["triggered"]) == 2  # master updated, feature added
    [skip] = reply.body["skipped"]
    assert skip["ref"] == "refs/tags/v0.9" and "deleted" in skip["reason"]


async def test_bitbucket_data_center_ping(hooks: Hooks) -> None:
    await hooks.add_config(uri=SERVER_URI, triggers=[trigger("Bitbucket")])
    body = b'{"test": true}'
    headers = {**_server_headers(body), "X-Event-Key": "diagnostics:ping"}
    reply = await hooks.post("/hooks/bitbucket", body, headers)
    assert reply.status == 200, reply.text
    assert reply.body["buildConfigs"] == [{"namespace": NS, "name": "app"}]


async def test_github_uri_is_not_a_bitbucket_candidate(hooks: Hooks) -> None:
    await hooks.add_config(uri=GITHUB_URI, triggers=[trigger("GitHub")])
    body = raw("bitbucket/server-repo-refs-changed.json")
    reply = await hooks.post("/hooks/bitbucket", body, _server_headers(body))
    assert reply.status == 401
