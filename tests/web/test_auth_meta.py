"""Bearer authentication, health and readiness, /metrics and /openapi.json."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pytest_aiohttp import AiohttpClient

from tests.factories import buildconfig_doc
from tests.web.conftest import TOKEN, Env, make_env_app
from tests.web.test_buildconfigs import status_of
from triggerd.web import LIFECYCLE, auth, health
from triggerd.web.app import make_app
from triggerd.web.openapi import Endpoint


async def test_missing_token(env: Env) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        response = await env.client.get(env.path("builds"), headers=headers)
        assert response.status == 401
        body = await response.json()
        status_of(body, 401, "Unauthorized")
        assert "bearer token is required" in body["message"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_writes_without_a_token_change_nothing(env: Env) -> None:
    await env.create_bc("app")
    before = await env.snapshot()
    attempts = [
        ("POST", "buildconfigs", buildconfig_doc("other")),
        ("PUT", "buildconfigs/app", buildconfig_doc("app")),
        ("DELETE", "buildconfigs/app", None),
        ("POST", "buildconfigs/app/instantiate", {}),
    ]
    for method, resource, body in attempts:
        response = await env.client.request(method, env.path(resource), json=body)
        assert response.status == 401, (method, resource)
        status_of(await response.json(), 401, "Unauthorized")
    assert await env.snapshot() == before


async def test_wrong_token_is_not_echoed(env: Env) -> None:
    wrong = "wrong-token-do-not-echo"
    response = await env.client.get(
        env.path("builds"), headers={"Authorization": f"Bearer {wrong}"}
    )
    assert response.status == 401
    text = await response.text()
    assert wrong not in text
    body = await response.json()
    status_of(body, 401, "Unauthorized")
    assert body["message"] == "invalid token"
    before = await env.snapshot()
    response = await env.client.post(
        env.path("buildconfigs"), json={}, headers={"Authorization": f"Bearer {wrong}"}
    )
    assert response.status == 401
    assert await env.snapshot() == before


async def test_token_scheme_is_case_insensitive(env: Env) -> None:
    response = await env.client.get(
        env.path("builds"), headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert response.status == 200


def test_token_matching() -> None:
    assert auth.token_matches("b", ["a", "b"])
    assert not auth.token_matches("c", ["a", "b"])
    assert not auth.token_matches("a", [])
    assert not auth.token_matches("ä", ["a"])  # non-ASCII must not raise


async def test_public_routes_need_no_token(env: Env) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        response = await env.client.get(path)
        assert response.status == 200, path
    assert await (await env.client.get("/healthz")).text() == "ok\n"


async def test_readiness_follows_the_engine(env: Env, tmp_path: Path) -> None:
    state = env.client.app[LIFECYCLE]
    assert state.ready
    state.stopping.set()
    response = await env.client.get("/readyz")
    assert response.status == 503
    assert "stopping" in await response.text()
    assert (await env.client.get("/healthz")).status == 200
    # An application whose engine has not started yet is not ready either.
    app, *_ = make_env_app(tmp_path / "unstarted")
    answer = await health.readyz(make_mocked_request("GET", "/readyz", app=app))
    assert isinstance(answer, web.Response) and answer.status == 503
    assert answer.text == "not ready: starting\n"


async def test_metrics_count_requests_by_route_template(env: Env) -> None:
    await env.call("GET", "builds/app-9")
    await env.client.get(env.path("builds"))  # 401
    response = await env.client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    route = "/apis/build.openshift.io/v1/namespaces/{namespace}/builds/{name}"
    pattern = (
        r'triggerd_http_requests_total\{method="GET",route="'
        + re.escape(route)
        + r'",status="404"\}'
    )
    assert re.search(pattern, text), text
    assert re.search(r'route="[^"]*/builds",status="401"', text)
    assert "app-9" not in text  # names never become label values
    assert "triggerd_http_request_duration_seconds_bucket" in text
    assert "triggerd_build_queue_depth" in text


async def test_openapi_lists_every_route(env: Env) -> None:
    response = await env.client.get("/openapi.json")
    doc = await response.json()
    assert doc["openapi"].startswith("3.")
    served = {
        (r.resource.canonical, r.method.lower())
        for r in env.client.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served
    base = "/apis/build.openshift.io/v1/namespaces/{namespace}"
    expected = {
        (f"{base}/buildconfigs", "get"),
        (f"{base}/buildconfigs", "post"),
        (f"{base}/buildconfigs/{{name}}", "get"),
        (f"{base}/buildconfigs/{{name}}", "put"),
        (f"{base}/buildconfigs/{{name}}", "delete"),
        (f"{base}/buildconfigs/{{name}}/instantiate", "post"),
        (f"{base}/builds", "get"),
        (f"{base}/builds/{{name}}", "get"),
        (f"{base}/builds/{{name}}", "patch"),
        (f"{base}/builds/{{name}}", "delete"),
        (f"{base}/builds/{{name}}/log", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    }
    assert expected <= documented
    same_under_triggerd = {
        (p.replace("build.openshift.io", "triggerd.dev"), m)
        for p, m in expected
        if p.startswith("/apis/")
    }
    assert same_under_triggerd <= documented
    operation_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    create = doc["paths"][f"{base}/buildconfigs"]["post"]
    assert "security" not in create  # the document-wide bearer requirement applies
    assert set(create["requestBody"]["content"]) == {
        "application/json",
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
    }
    assert {"201", "401", "409", "413", "415", "422"} <= set(create["responses"])
    log_params = {
        p["name"] for p in doc["paths"][f"{base}/builds/{{name}}/log"]["get"]["parameters"]
    }
    assert log_params == {"namespace", "name", "follow", "tailLines", "previous"}


async def test_an_unlisted_route_still_appears_in_openapi(tmp_path: Path) -> None:
    from triggerd.web.openapi import document

    app, *_ = make_env_app(tmp_path)

    @auth.public
    async def hook(request: web.Request) -> web.Response:
        """Receive a webhook."""
        return web.Response()

    app.router.add_post("/hooks/{provider}", hook)
    doc = document(app)
    operation = doc["paths"]["/hooks/{provider}"]["post"]
    assert operation["summary"] == "Receive a webhook."
    assert operation["security"] == []


async def test_routes_opt_out_of_bearer_auth_declaratively(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    _, engine, _, logs = make_env_app(tmp_path)

    @auth.public
    async def hook(request: web.Request) -> web.Response:
        """A webhook: authenticates each delivery itself."""
        return web.Response(text="hooked")

    async def private(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    extra = [
        Endpoint(
            method="POST",
            path="/hooks/{provider}",
            handler=hook,
            operation_id="hook",
            summary="hook",
            tag="webhooks",
        ),
        Endpoint(
            method="GET",
            path="/private",
            handler=private,
            operation_id="private",
            summary="private",
            tag="other",
        ),
    ]
    client = await aiohttp_client(make_app(engine, logs, engine.settings, extra_routes=extra))
    response = await client.post("/hooks/github")
    assert response.status == 200 and await response.text() == "hooked"
    assert (await client.get("/private")).status == 401
    response = await client.get("/private", headers={"Authorization": f"Bearer {TOKEN}"})
    assert await response.text() == "secret"
    doc = await (await client.get("/openapi.json")).json()
    assert doc["paths"]["/hooks/{provider}"]["post"]["security"] == []


async def test_openapi_document_is_valid(env: Env) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    doc = await (await env.client.get("/openapi.json")).json()
    validator.validate(doc)
