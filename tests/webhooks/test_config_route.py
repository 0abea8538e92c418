"""OpenShift's per-BuildConfig webhook URLs: URL secret, extra checks, filters, answers."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
import yaml

from tests.intake.payloads import document, encode, raw
from tests.webhooks.conftest import (
    CLOUD_URI,
    GITLAB_URI,
    JSON,
    NS,
    OTHER_SECRET,
    REF_SECRET,
    SECRET,
    Hooks,
    config_path,
    github_headers,
    status_of,
    trigger,
)
from triggerd import errors, intake
from triggerd.intake import signatures
from triggerd.web import webhooks

PUSH = raw("github/push-many-commits.json")
PUSH_AFTER = "1481a2de7b2a7d8ed3e9f0d6d2fc1a1a5ad0a5cb"


async def test_push_with_url_secret_only_starts_the_pushed_commit(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    reply = await hooks.post(
        config_path("app", "github"), PUSH, github_headers(PUSH, delivery="d-1", secret=None)
    )
    assert reply.status == 201, reply.text
    assert reply.body == {
        "delivery": "d-1",
        "triggered": [
            {"namespace": NS, "name": "app-1", "buildConfig": "app", "revision": PUSH_AFTER}
        ],
    }
    [build] = await hooks.builds()
    assert build.spec.revision is not None and build.spec.revision.commit == PUSH_AFTER
    assert build.spec.revision.message == "Tidy up"
    assert build.triggered_by[0]["message"] == "GitHub WebHook"
    assert build.triggered_by[0]["githubWebHook"]["secret"] == "<secret>"


async def test_a_present_signature_is_verified_too(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    path = config_path("app", "github")
    good = await hooks.post(path, PUSH, github_headers(PUSH, delivery="good"))
    assert good.status == 201, good.text
    bad = await hooks.post(path, PUSH, github_headers(PUSH, delivery="bad", secret=OTHER_SECRET))
    assert bad.status == 401
    status_of(bad.body, 401, "Unauthorized")
    assert len(await hooks.builds()) == 1


async def test_sha1_only_is_ignored_here_as_openshift_does(hooks: Hooks) -> None:
    # The URL secret authenticates this route; a legacy SHA-1 header is not a signature
    # triggerd checks, so it neither helps nor hurts (the org route refuses it).
    await hooks.add_config(triggers=[trigger("GitHub")])
    headers = github_headers(PUSH, delivery="sha1", secret=None)
    headers["X-Hub-Signature"] = "sha1=" + hmac.new(b"x", PUSH, hashlib.sha1).hexdigest()
    reply = await hooks.post(config_path("app", "github"), PUSH, headers)
    assert reply.status == 201, reply.text


async def test_every_refusal_answers_the_same_401(hooks: Hooks) -> None:
    await hooks.add_config("app", triggers=[trigger("GitHub")])
    await hooks.add_config("gitlab-only", triggers=[trigger("GitLab")])
    unsigned = github_headers(PUSH, secret=None)
    refusals = [
        (config_path("missing", "github"), unsigned),
        (config_path("app", "github", namespace="elsewhere"), unsigned),
        (config_path("gitlab-only", "github"), unsigned),
        (config_path("app", "github", "wrong-secret"), unsigned),
        (config_path("app", "github", SECRET[:-1]), unsigned),
        (config_path("app", "github"), github_headers(PUSH, secret="forged")),
        (config_path("app", "gitlab"), unsigned),
        (config_path("app", "generic"), {}),
    ]
    texts = set()
    for path, headers in refusals:
        reply = await hooks.post(path, PUSH, headers)
        assert reply.status == 401, (path, reply.text)
        status_of(reply.body, 401, "Unauthorized")
        texts.add(reply.text)
    assert len(texts) == 1
    assert texts.pop().count(webhooks.UNAUTHORIZED) == 1
    assert await hooks.builds() == []


async def test_secret_from_a_secret_reference(hooks: Hooks) -> None:
    hook = {"type": "GitHub", "github": {"secretReference": {"name": "hook-secret"}}}
    await hooks.add_config(triggers=[hook])
    reply = await hooks.post(
        config_path("app", "github", REF_SECRET), PUSH, github_headers(PUSH, secret=REF_SECRET)
    )
    assert reply.status == 201, reply.text


async def test_the_url_secret_picks_among_several_triggers(hooks: Hooks) -> None:
    await hooks.add_config(
        triggers=[trigger("GitHub", OTHER_SECRET, branches=["nope"]), trigger("GitHub")]
    )
    reply = await hooks.post(config_path("app", "github"), PUSH, github_headers(PUSH))
    assert reply.status == 201, reply.text
    reply = await hooks.post(
        config_path("app", "github", OTHER_SECRET), PUSH, github_headers(PUSH, secret=OTHER_SECRET)
    )
    assert reply.status == 200
    assert reply.body["reason"] == "branch main does not match branches nope"


async def test_other_api_group_and_no_api_token_needed(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    path = config_path("app", "github").replace("build.openshift.io", "triggerd.dev")
    reply = await hooks.post(path, PUSH, github_headers(PUSH))
    assert reply.status == 201, reply.text


@pytest.mark.parametrize(
    ("fixture", "ref", "options", "reason"),
    [
        ("github/push-many-commits.json", "release", {}, "branch main does not match"),
        ("github/push-many-commits.json", "main", {"branches": ["rel-*"]}, "branches rel-*"),
        ("github/push-many-commits.json", "main", {"paths": ["deploy/*"]}, "trigger's paths"),
        ("github/push-many-commits.json", "main", {"ignorePaths": ["*"]}, "ignorePaths"),
        ("github/push-branch-deleted.json", "feature-x", {}, "branch feature-x was deleted"),
        ("github/push-tag-deleted.json", "main", {"tags": ["*"]}, "tag simple-tag was deleted"),
        ("github/push-tag-created.json", "main", {}, "tag simple-tag does not match"),
        (
            "github/push-many-commits.json",
            "main",
            {"ignoreAuthors": ["*@users.noreply.github.com"]},
            "ignoreAuthors",
        ),
    ],
)
async def test_filters_answer_200_with_the_reason(
    hooks: Hooks, fixture: str, ref: str, options: dict[str, Any], reason: str
) -> None:
    await hooks.add_config(ref=ref, triggers=[trigger("GitHub", **options)])
    body = raw(fixture)
    reply = await hooks.post(config_path("app", "github"), body, github_headers(body))
    assert reply.status == 200, reply.text
    assert reply.body["triggered"] == []
    assert reason in reply.body["reason"]
    [skip] = reply.body["skipped"]
    assert skip["buildConfig"] == "app" and reason in skip["reason"]
    assert await hooks.builds() == []


async def test_path_filter_that_matches_builds(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub", paths=["src/*"], ignorePaths=["docs/*"])])
    reply = await hooks.post(config_path("app", "github"), PUSH, github_headers(PUSH))
    assert reply.status == 201, reply.text


async def test_tag_push_with_tag_globs(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub", tags=["simple-*"])])
    body = raw("github/push-tag-created.json")
    reply = await hooks.post(config_path("app", "github"), body, github_headers(body))
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


@pytest.mark.parametrize("marker", ["[skip ci]", "[ci skip]"])
async def test_skip_ci(hooks: Hooks, marker: str) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    doc = document("github/push-many-commits.json")
    doc["head_commit"]["message"] = f"Tidy up {marker}"
    body = encode(doc)
    reply = await hooks.post(config_path("app", "github"), body, github_headers(body))
    assert reply.status == 200, reply.text
    assert marker in reply.body["reason"]


async def test_skip_ci_can_be_turned_off(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub", skipCi=False)])
    doc = document("github/push-many-commits.json")
    doc["head_commit"]["message"] = "Tidy up [skip ci]"
    body = encode(doc)
    reply = await hooks.post(config_path("app", "github"), body, github_headers(body))
    assert reply.status == 201, reply.text


async def test_paused_config(hooks: Hooks) -> None:
    await hooks.add_config(paused=True, triggers=[trigger("GitHub"), trigger("Generic")])
    reply = await hooks.post(config_path("app", "github"), PUSH, github_headers(PUSH))
    assert reply.status == 200 and reply.body["reason"] == "buildconfig app is paused"
    reply = await hooks.post(config_path("app", "generic"))
    assert reply.status == 200 and reply.body["reason"] == "buildconfig app is paused"
    assert await hooks.builds() == []


async def test_ping_names_the_config(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    body = raw("github/ping-repository.json")
    reply = await hooks.post(config_path("app", "github"), body, github_headers(body, event="ping"))
    assert reply.status == 200, reply.text
    assert reply.body["ping"] is True
    assert reply.body["buildConfigs"] == [{"namespace": NS, "name": "app"}]
    assert await hooks.builds() == []


async def test_bad_requests_after_verification(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    path = config_path("app", "github")
    no_event = github_headers(PUSH)
    del no_event["X-GitHub-Event"]
    reply = await hooks.post(path, PUSH, no_event)
    assert reply.status == 400
    status_of(reply.body, 400, "BadRequest")
    assert "X-GitHub-Event" in reply.body["message"]

    reply = await hooks.post(path, PUSH, github_headers(PUSH, event="issues"))
    assert reply.status == 400
    assert "'issues' is not supported" in reply.body["message"]

    broken = b'{"ref": "refs/heads/main",'
    reply = await hooks.post(path, broken, github_headers(broken))
    assert reply.status == 400
    assert "not valid JSON" in reply.body["message"]
    assert await hooks.builds() == []


# GitLab and Bitbucket ------------------------------------------------------------------------
async def test_gitlab_builds_checkout_sha_and_checks_a_sent_token(hooks: Hooks) -> None:
    await hooks.add_config(uri=GITLAB_URI, ref="master", triggers=[trigger("GitLab")])
    body = raw("gitlab/push-hook.json")
    path = config_path("app", "gitlab")
    headers = {"X-Gitlab-Event": "Push Hook", "Content-Type": JSON}
    wrong = await hooks.post(path, body, {**headers, "X-Gitlab-Token": "wrong"})
    assert wrong.status == 401
    reply = await hooks.post(path, body, {**headers, "X-Gitlab-Token": SECRET})
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    reply = await hooks.post(path, body, headers)  # OpenShift's form: URL secret only
    assert reply.status == 201, reply.text


async def test_bitbucket_cloud_per_config(hooks: Hooks) -> None:
    await hooks.add_config(uri=CLOUD_URI, ref="name-of-branch", triggers=[trigger("Bitbucket")])
    body = raw("bitbucket/cloud-repo-push.json")
    headers = {"X-Event-Key": "repo:push", "Content-Type": JSON}
    reply = await hooks.post(config_path("app", "bitbucket"), body, headers)
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] == "709d658dc5b6d6afcd46049c2f332ee3f515a67d"
    bad = {**headers, "X-Hub-Signature": signatures.sign_github(body, OTHER_SECRET)}
    assert (await hooks.post(config_path("app", "bitbucket"), body, bad)).status == 401


# Generic ---------------------------------------------------------------------------------------
async def test_generic_empty_body_builds_the_configured_ref(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("Generic")])
    reply = await hooks.post(config_path("app", "generic"))
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] is None
    [build] = await hooks.builds()
    assert build.spec.revision is None
    assert build.triggered_by[0]["message"] == "Generic WebHook"


def _generic_body(**extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "git": {"uri": "https://github.com/Codertocat/Hello-World.git", "ref": "main"},
        "env": [{"name": "GREETING", "value": "hello"}],
        "dockerStrategyOptions": {"buildArgs": [{"name": "V", "value": "1"}], "noCache": True},
    }
    doc.update(extra)
    return encode(doc)


async def test_generic_options_ignored_unless_allowed(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("Generic")])
    reply = await hooks.post(config_path("app", "generic"), _generic_body(), {"Content-Type": JSON})
    assert reply.status == 201, reply.text
    assert reply.body["ignored"] == [
        "dockerStrategyOptions (the trigger does not set allowStrategyOptions)",
        "env (the trigger does not set allowEnv)",
    ]
    [build] = await hooks.builds()
    doc = build.to_dict()
    assert "GREETING" not in str(doc["spec"]["strategy"])
    assert "buildArgs" not in str(doc["spec"]["strategy"])


async def test_generic_options_applied_when_allowed(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("Generic", allowEnv=True, allowStrategyOptions=True)])
    text = yaml.safe_dump(yaml.safe_load(_generic_body())).encode()
    reply = await hooks.post(
        config_path("app", "generic"), text, {"Content-Type": "application/yaml"}
    )
    assert reply.status == 201, reply.text
    assert "ignored" not in reply.body
    [build] = await hooks.builds()
    strategy = build.to_dict()["spec"]["strategy"]["dockerStrategy"]
    assert {"name": "GREETING", "value": "hello"} in strategy["env"]
    assert {"name": "V", "value": "1"} in strategy["buildArgs"]
    assert strategy["noCache"] is True


async def test_generic_ref_must_be_the_configs(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("Generic")])
    body = encode({"git": {"ref": "refs/heads/feature", "commit": "a" * 40}})
    reply = await hooks.post(config_path("app", "generic"), body, {"Content-Type": JSON})
    assert reply.status == 200, reply.text
    assert reply.body["reason"] == "ref feature does not match the config's ref main"
    body = encode({"git": {"ref": "refs/heads/main", "commit": "a" * 40}})
    reply = await hooks.post(config_path("app", "generic"), body, {"Content-Type": JSON})
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] == "a" * 40


async def test_answer_that_orjson_refuses_is_written_escaped(hooks: Hooks) -> None:
    """A lone surrogate (valid JSON escape, no UTF-8 form) echoed in the skip reason."""
    await hooks.add_config(triggers=[trigger("Generic")])
    body = b'{"git": {"ref": "refs/heads/x\\ud800", "commit": "' + b"a" * 40 + b'"}}'
    reply = await hooks.post(config_path("app", "generic"), body, {"Content-Type": JSON})
    assert reply.status == 200, reply.text
    assert "\\ud800" in reply.text
    assert reply.body["reason"] == "ref x\ud800 does not match the config's ref main"


async def test_generic_post_receive_refs_build_the_first_matching_entry(hooks: Hooks) -> None:
    """OpenShift loops over git.refs; the branch the config builds need not come first."""
    await hooks.add_config(triggers=[trigger("Generic")])
    body = encode(
        {
            "git": {
                "refs": [
                    {"ref": "refs/heads/feature", "commit": "b" * 40},
                    {"ref": "refs/heads/main", "commit": "c" * 40, "message": "release"},
                ]
            }
        }
    )
    reply = await hooks.post(config_path("app", "generic"), body, {"Content-Type": JSON})
    assert reply.status == 201, reply.text
    assert reply.body["triggered"][0]["revision"] == "c" * 40
    [build] = await hooks.builds()
    assert build.spec.revision is not None and build.spec.revision.message == "release"


async def test_generic_hmac_header(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("Generic", hmacHeader="X-Signature")])
    body = _generic_body()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    path = config_path("app", "generic")
    for value, status in [
        (None, 401),
        ("", 401),
        ("0" * 64, 401),
        ("sha1=" + digest, 401),
        (digest, 201),
        ("sha256=" + digest, 201),
        (digest.upper(), 201),
    ]:
        headers = {"Content-Type": JSON}
        if value is not None:
            headers["X-Signature"] = value
        reply = await hooks.post(path, body, headers)
        assert reply.status == status, (value, reply.text)
    assert len(await hooks.builds()) == 3


async def test_generic_bearer_secret(hooks: Hooks) -> None:
    await hooks.add_config(
        triggers=[trigger("Generic", bearerSecretReference={"name": "generic-bearer"})]
    )
    path = config_path("app", "generic")
    for authorization, status in [
        (None, 401),
        ("Bearer wrong", 401),
        (f"Bearer {SECRET}", 401),
        (f"Basic {REF_SECRET}", 401),
        ("Bearer bearer-secret-c0ffee1234", 201),
    ]:
        headers = {} if authorization is None else {"Authorization": authorization}
        reply = await hooks.post(path, b"", headers)
        assert reply.status == status, (authorization, reply.text)


async def test_generic_bearer_reference_that_is_not_configured_fails_closed(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("Generic", bearerSecretReference={"name": "nope"})])
    reply = await hooks.post(config_path("app", "generic"), b"", {"Authorization": "Bearer "})
    assert reply.status == 401


async def test_any_bad_signature_gets_the_one_401_body(
    hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])

    def refuse(*args: Any) -> Any:
        raise errors.BadSignature("a detail only the log may see")

    monkeypatch.setattr(intake, "parse_all", refuse)
    reply = await hooks.post(config_path("app", "github"), PUSH, github_headers(PUSH))
    assert reply.status == 401
    assert reply.body["message"] == webhooks.UNAUTHORIZED
