"""HTTP-level answers of the webhook routes: 405, 413, 415, 404, 503, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from aiohttp.http_exceptions import ContentLengthError, TransferEncodingError
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from tests.intake.payloads import document, encode, raw
from tests.support.processes import async_wait_for
from tests.webhooks.conftest import (
    BODY_LIMIT,
    JSON,
    SECRET,
    Hooks,
    config_path,
    github_headers,
    read,
    start_hooks,
    status_of,
    trigger,
)
from triggerd import errors
from triggerd.web import webhooks

PUSH = raw("github/push-many-commits.json")
HOOK_PATHS = [
    *(config_path("app", p) for p in ("github", "gitlab", "bitbucket", "generic")),
    config_path("app", "github").replace("build.openshift.io", "triggerd.dev"),
    "/hooks/github",
    "/hooks/gitlab",
    "/hooks/bitbucket",
]


@pytest.mark.parametrize("path", HOOK_PATHS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_wrong_method_is_405_with_allow(hooks: Hooks, path: str, method: str) -> None:
    response = await hooks.client.request(method, path)
    reply = await read(response)
    assert reply.status == 405, reply.text
    assert reply.headers["Allow"] == "POST"
    status_of(reply.body, 405, "MethodNotAllowed")
    assert SECRET not in reply.text


async def test_unknown_provider_is_404(hooks: Hooks) -> None:
    for path in ("/hooks/generic", "/hooks/gitea", config_path("app", "gitea")):
        reply = await hooks.post(path, PUSH, github_headers(PUSH))
        assert reply.status == 404, (path, reply.text)
        assert SECRET not in reply.text


async def test_declared_length_over_the_cap_is_413(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    big = b" " * (BODY_LIMIT + 1)
    for path in ("/hooks/github", config_path("app", "github")):
        reply = await hooks.post(path, big, github_headers(big))
        assert reply.status == 413, reply.text
        status_of(reply.body, 413, "RequestEntityTooLarge")
    assert await hooks.builds() == []


async def test_streamed_body_is_cut_off_at_the_cap(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    never = asyncio.Event()
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        # Past the cap, then nothing more ever: only a server that stops reading at the cap
        # can answer before the test times out.
        nonlocal sent
        chunk = b" " * 16384
        while sent <= BODY_LIMIT:
            sent += len(chunk)
            yield chunk
        await never.wait()

    for path in ("/hooks/github", config_path("app", "github")):
        sent = 0
        async with asyncio.timeout(10):
            response = await hooks.client.post(
                path, data=endless(), headers=github_headers(b"", delivery="stream")
            )
            reply = await read(response)
        assert reply.status == 413, reply.text
        assert "exceeds the limit" in reply.body["message"]
        assert sent < BODY_LIMIT + 64 * 1024
    assert await hooks.builds() == []


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/hooks/github", {"X-GitHub-Event": "push", "Content-Type": "text/plain"}),
        ("/hooks/gitlab", {"X-Gitlab-Event": "Push Hook", "Content-Type": "application/xml"}),
        ("/hooks/bitbucket", {"X-Event-Key": "repo:push", "Content-Type": "multipart/form-data"}),
    ],
)
async def test_unsupported_content_type_is_415(
    hooks: Hooks, path: str, headers: dict[str, str]
) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    reply = await hooks.post(path, PUSH, headers)
    assert reply.status == 415, reply.text
    status_of(reply.body, 415, "UnsupportedMediaType")


async def test_unsupported_content_type_on_the_config_route(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub"), trigger("Generic")])
    reply = await hooks.post(
        config_path("app", "github"), PUSH, {"X-GitHub-Event": "push", "Content-Type": "text/csv"}
    )
    assert reply.status == 415
    reply = await hooks.post(config_path("app", "generic"), b"<x/>", {"Content-Type": "text/xml"})
    assert reply.status == 415
    assert await hooks.builds() == []


async def test_unsupported_events_are_named(hooks: Hooks) -> None:
    cases = [
        ("/hooks/github", {"X-GitHub-Event": "pull_request"}, "pull_request"),
        ("/hooks/gitlab", {"X-Gitlab-Event": "Merge Request Hook"}, "Merge Request Hook"),
        ("/hooks/bitbucket", {"X-Event-Key": "pullrequest:created"}, "pullrequest:created"),
    ]
    for path, headers, event in cases:
        reply = await hooks.post(path, b"{}", {**headers, "Content-Type": JSON})
        assert reply.status == 400, reply.text
        assert f"'{event}' is not supported" in reply.body["message"]
    for path in ("/hooks/github", "/hooks/gitlab", "/hooks/bitbucket"):
        reply = await hooks.post(path, PUSH, {"Content-Type": JSON})
        assert reply.status == 400 and "is missing" in reply.body["message"]


async def test_full_queue_is_429_and_stores_nothing(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    hooks = await start_hooks(tmp_path, aiohttp_client, queue_limit=1)
    await hooks.add_config("a", triggers=[trigger("GitHub")])
    await hooks.add_config("b", triggers=[trigger("GitHub")])
    before = _webhook_counts(await (await hooks.client.get("/metrics")).text())
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, delivery="full"))
    assert reply.status == 429, reply.text
    status_of(reply.body, 429, "TooManyRequests")
    assert int(reply.headers["Retry-After"]) > 0
    assert await hooks.builds() == []
    after = _webhook_counts(await (await hooks.client.get("/metrics")).text())
    key = ("github", webhooks.QUEUE_FULL)
    assert after.get(key, 0.0) - before.get(key, 0.0) == 1
    # GitHub redelivers later; the same delivery then starts the builds.
    hooks.engine.settings = replace(hooks.engine.settings, queue_limit=0)
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, delivery="full"))
    assert reply.status == 201, reply.text


async def test_large_bodies_are_parsed_off_the_loop(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    hooks = await start_hooks(tmp_path, aiohttp_client, max_body_bytes=4 * 1024 * 1024)
    await hooks.add_config(triggers=[trigger("GitHub")])
    doc = document("github/push-many-commits.json")
    doc["head_commit"]["message"] = "x" * (2 * 1024 * 1024)
    body = encode(doc)
    reply = await hooks.post("/hooks/github", body, github_headers(body))
    assert reply.status == 201, reply.text[:200]


def _webhook_counts(text: str) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "triggerd_webhook_deliveries":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["provider"], sample.labels["result"])
                    counts[key] = sample.value
    return counts


async def test_deliveries_are_counted_by_provider_and_result(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub"), trigger("Generic")])
    before = _webhook_counts(await (await hooks.client.get("/metrics")).text())
    ping = raw("github/ping-repository.json").replace(b"Octocoders", b"Codertocat")
    deleted = raw("github/push-branch-deleted.json")
    sends = [
        ("/hooks/github", PUSH, github_headers(PUSH, delivery="m1")),  # triggered
        ("/hooks/github", PUSH, github_headers(PUSH, delivery="m1")),  # duplicate
        ("/hooks/github", deleted, github_headers(deleted)),  # skipped
        ("/hooks/github", ping, github_headers(ping, event="ping")),  # ping
        ("/hooks/github", PUSH, github_headers(PUSH, secret="bad")),  # unauthorized
        ("/hooks/github", b"{", github_headers(b"{")),  # malformed
        ("/hooks/github", PUSH, github_headers(PUSH, event="fork")),  # unsupported_event
        ("/hooks/github", PUSH, github_headers(PUSH, content_type="text/plain")),
        (config_path("app", "generic"), b"", {}),  # triggered
    ]
    for path, body, headers in sends:
        await hooks.post(path, body, headers)
    after = _webhook_counts(await (await hooks.client.get("/metrics")).text())

    def delta(provider: str, result: str) -> float:
        return after.get((provider, result), 0.0) - before.get((provider, result), 0.0)

    assert delta("github", webhooks.TRIGGERED) == 1
    assert delta("github", webhooks.DUPLICATE) == 1
    assert delta("github", webhooks.SKIPPED) == 1
    assert delta("github", webhooks.PING) == 1
    assert delta("github", webhooks.UNAUTHORIZED_RESULT) == 1
    assert delta("github", webhooks.MALFORMED) == 1
    assert delta("github", webhooks.UNSUPPORTED_EVENT) == 1
    assert delta("github", webhooks.UNSUPPORTED_MEDIA) == 1
    assert delta("generic", webhooks.TRIGGERED) == 1


async def test_openapi_documents_the_public_webhook_routes(hooks: Hooks) -> None:
    document_ = await (await hooks.client.get("/openapi.json")).json()
    paths = document_["paths"]
    for path in (
        "/hooks/github",
        "/hooks/gitlab",
        "/hooks/bitbucket",
        "/apis/build.openshift.io/v1/namespaces/{namespace}/buildconfigs/{name}"
        "/webhooks/{secret}/generic",
        "/apis/triggerd.dev/v1/namespaces/{namespace}/buildconfigs/{name}/webhooks/{secret}/github",
    ):
        operation = paths[path]["post"]
        assert operation["security"] == []
        assert {"200", "201", "401"} <= set(operation["responses"])
    assert len(webhooks.ROUTES) == 11
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document_)
    assert json.dumps(document_).count("/webhooks/{secret}/") == 8


class _BrokenBody:
    """What aiohttp hands a handler when the sender broke off or garbled the framing."""

    content_length = None

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.content = self

    async def read(self, n: int = -1) -> bytes:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ContentLengthError("Not enough data to satisfy content length header."),
        TransferEncodingError("Invalid character in chunk size"),
    ],
)
async def test_a_body_cut_short_is_malformed_not_an_internal_error(error: Exception) -> None:
    request = cast(web.Request, _BrokenBody(error))
    with pytest.raises(errors.MalformedPayload, match="could not be read completely"):
        await webhooks._read_body(request, BODY_LIMIT)


async def test_an_answered_delivery_is_logged_once_with_its_status(
    hooks: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    caplog.set_level(logging.INFO)
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, delivery="log-1"))
    assert reply.status == 201
    refused = await hooks.post("/hooks/github", b"{}", {"Content-Type": JSON})
    assert refused.status == 400

    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]

    # aiohttp writes the access line once the answer is out: wait for the refused one's.
    await async_wait_for(access_lines, timeout=5, what="the access log line")
    delivery = [r.getMessage() for r in caplog.records if "'log-1'" in r.getMessage()]
    assert len(delivery) == 1, delivery
    assert delivery[0].startswith("127.0.0.1 github delivery 'log-1' on /hooks/github: 201 ")
    assert " triggered (1 build(s)) " in delivery[0]
    # The refused delivery is in the access log; the answered one only in its own line.
    access = access_lines()
    assert len(access) == 1 and " 400 " in access[0], access
