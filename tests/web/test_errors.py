"""Errors that are not the caller's fault: 429/503 with Retry-After, and a bare 500 for bugs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from tests.factories import buildconfig_doc
from tests.web.conftest import NS, TOKEN, Env, make_env_app
from tests.web.test_buildconfigs import status_of
from triggerd import errors
from triggerd.web import errors as web_errors


async def test_full_queue_is_429_with_retry_after(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    app, _, executor, _ = make_env_app(tmp_path, queue_limit=1)
    client = await aiohttp_client(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = f"/apis/build.openshift.io/v1/namespaces/{NS}"
    response = await client.post(f"{base}/buildconfigs", json=buildconfig_doc("app"), headers=auth)
    assert response.status == 201
    instantiate = f"{base}/buildconfigs/app/instantiate"
    assert (await client.post(instantiate, headers=auth)).status == 201
    await executor.wait_started(NS, "app-1")
    assert (await client.post(instantiate, headers=auth)).status == 201  # queued: New
    response = await client.post(instantiate, headers=auth)
    assert response.status == 429
    assert response.headers["Retry-After"] == "30"
    body = await response.json()
    status_of(body, 429, "TooManyRequests")
    assert body["details"]["retryAfterSeconds"] == 30
    listed = await (await client.get(f"{base}/builds", headers=auth)).json()
    assert [b["metadata"]["name"] for b in listed["items"]] == ["app-1", "app-2"]


async def test_unexpected_errors_are_a_bare_500(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire at /secret/path")

    monkeypatch.setattr(env.engine.store, "list_buildconfigs", broken)
    with caplog.at_level(logging.ERROR):
        response = await env.call("GET", "buildconfigs")
    assert response.status == 500
    text = await response.text()
    assert "secret" not in text and "Traceback" not in text
    body = await response.json()
    status_of(body, 500, "InternalError")
    assert body["message"] == "internal error"
    assert "disk on fire" in caplog.text  # the detail goes to the log only


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (errors.Invalid("BuildConfig", "x", [errors.FieldError("spec", "bad")]), 422, "Invalid"),
        (errors.NotFound("Build", "x"), 404, "NotFound"),
        (errors.AlreadyExists("Build", "x"), 409, "AlreadyExists"),
        (errors.Conflict("stale"), 409, "Conflict"),
        (errors.MalformedPayload("junk"), 400, "BadRequest"),
        (errors.BadRequest("no"), 400, "BadRequest"),
        (errors.UnsupportedEvent("issues"), 400, "BadRequest"),
        (errors.Unauthorized("who"), 401, "Unauthorized"),
        (errors.BadSignature("forged"), 401, "Unauthorized"),
        (errors.PayloadTooLarge("big"), 413, "RequestEntityTooLarge"),
        (errors.UnsupportedMediaType("xml"), 415, "UnsupportedMediaType"),
        (errors.TemporaryError("busy", delay=0.2), 503, "ServiceUnavailable"),
        (errors.PermanentError("broken setup"), 500, "InternalError"),
    ],
)
def test_every_domain_error_maps_to_a_status(
    error: errors.TriggerdError, code: int, reason: str
) -> None:
    response = web_errors.error_response(error)
    assert response.status == code
    assert response.text is not None
    body = json.loads(response.text)
    status_of(body, code, reason)
    assert body["message"] == str(error)
    if code == 503:
        assert response.headers["Retry-After"] == "1"  # rounded up, never 0
