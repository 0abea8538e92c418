"""No secret ever leaves the server: a whole scenario of accepted, refused and failing
deliveries, with every log record, every response and the /metrics text searched for them."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.intake.payloads import raw
from tests.web.conftest import TOKEN
from tests.webhooks.conftest import (
    BEARER_SECRET,
    CLOUD_URI,
    JSON,
    OTHER_SECRET,
    REF_SECRET,
    SECRET,
    Hooks,
    config_path,
    github_headers,
    read,
    trigger,
)
from triggerd.intake import signatures

PUSH = raw("github/push-many-commits.json")
SECRETS = (SECRET, OTHER_SECRET, REF_SECRET, BEARER_SECRET)


async def test_no_secret_in_logs_responses_or_metrics(
    hooks: Hooks, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    await hooks.add_config(
        triggers=[
            trigger("GitHub"),
            {"type": "GitLab", "gitlab": {"secretReference": {"name": "hook-secret"}}},
            trigger(
                "Generic",
                OTHER_SECRET,
                hmacHeader="X-Signature",
                bearerSecretReference={"name": "generic-bearer"},
            ),
        ]
    )
    await hooks.add_config(
        "cloud", uri=CLOUD_URI, ref="name-of-branch", triggers=[trigger("Bitbucket")]
    )
    texts: list[str] = []

    async def post(path: str, body: bytes = b"", headers: Any = None, **kw: Any) -> int:
        reply = await hooks.post(path, body, headers, **kw)
        texts.append(reply.text)
        texts.extend(f"{k}: {v}" for k, v in reply.headers.items())
        return reply.status

    generic_body = b'{"env": [{"name": "A", "value": "b"}]}'
    generic_signature = signatures.sign_github(generic_body, OTHER_SECRET)
    cloud = raw("bitbucket/cloud-repo-push.json")
    gitlab = raw("gitlab/push-hook.json")
    scenario = [
        (config_path("app", "github"), PUSH, github_headers(PUSH, delivery="ok-1"), {}, 201),
        (config_path("app", "github"), PUSH, github_headers(PUSH, secret="x"), {}, 401),
        (config_path("app", "github", "guess"), PUSH, github_headers(PUSH), {}, 401),
        (config_path("nope", "github"), PUSH, github_headers(PUSH), {}, 401),
        ("/hooks/github", PUSH, github_headers(PUSH, delivery="ok-2"), {}, 201),
        ("/hooks/github", PUSH, github_headers(PUSH, delivery="ok-2"), {}, 200),
        ("/hooks/github", PUSH, github_headers(PUSH, secret=None), {}, 401),
        (
            config_path("app", "gitlab", REF_SECRET),
            gitlab,
            {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong", "Content-Type": JSON},
            {},
            401,
        ),
        (
            config_path("app", "generic", OTHER_SECRET),
            generic_body,
            {
                "Content-Type": JSON,
                "X-Signature": generic_signature,
                "Authorization": f"Bearer {BEARER_SECRET}",
            },
            {},
            201,
        ),
        (
            config_path("app", "generic", OTHER_SECRET),
            generic_body,
            {"Content-Type": JSON, "X-Signature": generic_signature},
            {},
            401,
        ),
        (
            "/hooks/bitbucket",
            cloud,
            {"X-Event-Key": "repo:push", "Content-Type": JSON},
            {"params": {"secret": SECRET}},
            201,
        ),
        (
            "/hooks/bitbucket",
            cloud,
            {"X-Event-Key": "repo:push", "Content-Type": JSON},
            {"params": {"secret": SECRET + "x"}},
            401,
        ),
        (config_path("app", "github"), b"{", github_headers(b"{"), {}, 400),
    ]
    for path, body, headers, extra, status in scenario:
        assert await post(path, body, headers, **extra) == status, (path, texts[-1])

    # Wrong method and an unexpected failure, both on a path that carries the secret.
    response = await hooks.client.get(config_path("app", "github"))
    texts.append((await read(response)).text)
    assert response.status == 405

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the store fell over")

    monkeypatch.setattr(hooks.engine, "start_builds", explode)
    assert await post(config_path("app", "github"), PUSH, github_headers(PUSH)) == 500
    monkeypatch.undo()

    auth = {"Authorization": f"Bearer {TOKEN}"}
    # (Not the BuildConfigs: an inline trigger secret is part of the config, as in OpenShift,
    # and is served to API token holders so an exported config round-trips.)
    for path in (
        "/apis/build.openshift.io/v1/namespaces/default/builds",
        "/metrics",
        "/openapi.json",
    ):
        response = await hooks.client.get(path, headers=auth)
        assert response.status == 200
        texts.append(await response.text())

    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    # The scenario was logged (route templates, results), and the failure with a traceback.
    assert "/webhooks/{secret}/github" in logged
    assert "refused (unauthorized)" in logged
    assert "RuntimeError: the store fell over" in logged
    everything = logged + "\n".join(texts)
    for secret in SECRETS:
        assert secret not in everything
        assert secret[:12] not in everything
