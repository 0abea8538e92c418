"""BuildConfig CRUD over HTTP, and the Status body of every way a write can be refused."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.factories import buildconfig_doc
from tests.web.conftest import BODY_LIMIT, NS, Env


def status_of(body: dict[str, Any], code: int, reason: str) -> None:
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert body["message"]
    assert "Traceback" not in json.dumps(body)


async def test_create_get_list_replace_delete(env: Env) -> None:
    created = await env.create_bc()
    assert created["kind"] == "BuildConfig"
    assert created["apiVersion"] == "build.openshift.io/v1"
    meta = created["metadata"]
    assert meta["name"] == "app" and meta["namespace"] == "default"
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]

    got = await (await env.call("GET", "buildconfigs/app")).json()
    assert got["metadata"]["uid"] == meta["uid"]

    listed = await (await env.call("GET", "buildconfigs")).json()
    assert listed["kind"] == "BuildConfigList"
    assert listed["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in listed["items"]] == ["app"]

    changed = buildconfig_doc("app", ref="release")
    changed["metadata"]["resourceVersion"] = meta["resourceVersion"]
    response = await env.call("PUT", "buildconfigs/app", json=changed)
    assert response.status == 200, await response.text()
    replaced = await response.json()
    assert replaced["spec"]["source"]["git"]["ref"] == "release"
    assert replaced["metadata"]["uid"] == meta["uid"]
    assert replaced["metadata"]["resourceVersion"] != meta["resourceVersion"]

    response = await env.call("DELETE", "buildconfigs/app")
    assert response.status == 200
    body = await response.json()
    assert body["kind"] == "Status" and body["status"] == "Success"
    assert body["details"]["name"] == "app" and body["details"]["kind"] == "buildconfigs"
    assert (await env.call("GET", "buildconfigs/app")).status == 404


async def test_create_from_yaml(env: Env) -> None:
    for content_type in ("application/yaml", "application/x-yaml", "text/yaml"):
        name = content_type.replace("/", "-").replace("application-", "")
        text = yaml.safe_dump(buildconfig_doc(name))
        response = await env.call("POST", "buildconfigs", data=text, content_type=content_type)
        assert response.status == 201, await response.text()
        assert (await response.json())["metadata"]["name"] == name


async def test_same_routes_under_triggerd_group(env: Env) -> None:
    await env.create_bc()
    path = env.path("buildconfigs/app", group="triggerd.dev")
    response = await env.client.get(path, headers=env.auth)
    assert response.status == 200
    doc = await response.json()
    assert doc["apiVersion"] == "triggerd.dev/v1"
    assert doc["metadata"]["name"] == "app"


async def test_not_found(env: Env) -> None:
    response = await env.call("GET", "buildconfigs/nope")
    assert response.status == 404
    body = await response.json()
    status_of(body, 404, "NotFound")
    assert body["message"] == 'BuildConfig "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "BuildConfig"}
    for method in ("PUT", "DELETE"):
        response = await env.call(method, "buildconfigs/nope", json=buildconfig_doc("nope"))
        assert response.status == 404, method
    response = await env.call("POST", "buildconfigs/nope/instantiate")
    status_of(await response.json(), 404, "NotFound")


async def test_already_exists(env: Env) -> None:
    await env.create_bc()
    before = await env.snapshot()
    response = await env.call("POST", "buildconfigs", json=buildconfig_doc("app", ref="other"))
    assert response.status == 409
    body = await response.json()
    status_of(body, 409, "AlreadyExists")
    assert body["details"]["name"] == "app"
    assert await env.snapshot() == before


async def test_stale_resource_version_conflicts(env: Env) -> None:
    created = await env.create_bc()
    first = buildconfig_doc("app", ref="one")
    first["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    assert (await env.call("PUT", "buildconfigs/app", json=first)).status == 200
    before = await env.snapshot()
    stale = buildconfig_doc("app", ref="two")
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    response = await env.call("PUT", "buildconfigs/app", json=stale)
    assert response.status == 409
    status_of(await response.json(), 409, "Conflict")
    assert await env.snapshot() == before


async def test_invalid_lists_field_paths(env: Env) -> None:
    await env.create_bc("existing")
    before = await env.snapshot()
    doc = buildconfig_doc("bad")
    doc["spec"]["source"]["contextDir"] = "../outside"
    doc["spec"]["runPolicy"] = "Sometimes"
    response = await env.call("POST", "buildconfigs", json=doc)
    assert response.status == 422
    body = await response.json()
    status_of(body, 422, "Invalid")
    causes = {c["field"]: c for c in body["details"]["causes"]}
    assert "spec.source.contextDir" in causes
    assert "spec.runPolicy" in causes
    assert causes["spec.source.contextDir"]["reason"] == "FieldValueInvalid"
    assert ".." in causes["spec.source.contextDir"]["message"]
    assert body["details"]["name"] == "bad" and body["details"]["kind"] == "BuildConfig"
    assert await env.snapshot() == before


async def test_unknown_strategy_is_refused_and_nothing_changes(env: Env) -> None:
    await env.create_bc("existing")
    await env.start("existing")
    await env.executor.wait_started(NS, "existing-1")  # the build stays Running from here
    before = await env.snapshot()
    doc = buildconfig_doc("bad")
    doc["spec"]["strategy"] = {"type": "Kaniko", "kanikoStrategy": {}}
    response = await env.call("POST", "buildconfigs", json=doc)
    assert response.status == 422
    body = await response.json()
    status_of(body, 422, "Invalid")
    fields = [c["field"] for c in body["details"]["causes"]]
    assert "spec.strategy.type" in fields, body
    # Replacing a good config with the bad strategy is refused the same way.
    existing = await (await env.call("GET", "buildconfigs/existing")).json()
    existing["spec"]["strategy"] = doc["spec"]["strategy"]
    response = await env.call("PUT", "buildconfigs/existing", json=existing)
    assert response.status == 422
    assert await env.snapshot() == before


async def test_malformed_bodies_are_bad_requests(env: Env) -> None:
    before = await env.snapshot()
    cases = [
        ("application/yaml", "metadata: {name: x\nspec: ["),
        ("application/json", '{"metadata": '),
        ("application/yaml", "a: &x [1]\nb: *x\n"),  # aliases are refused (billion laughs)
        ("application/yaml", "kind: BuildConfig\n---\nkind: BuildConfig\n"),
    ]
    for content_type, text in cases:
        response = await env.call("POST", "buildconfigs", data=text, content_type=content_type)
        assert response.status == 400, text
        status_of(await response.json(), 400, "BadRequest")
    assert await env.snapshot() == before


async def test_unsupported_media_type(env: Env) -> None:
    before = await env.snapshot()
    text = json.dumps(buildconfig_doc("app"))
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = await env.call("POST", "buildconfigs", data=text, content_type=content_type)
        assert response.status == 415
        body = await response.json()
        status_of(body, 415, "UnsupportedMediaType")
        assert "application/json" in body["message"]
    assert await env.snapshot() == before


async def test_oversized_body(env: Env) -> None:
    before = await env.snapshot()
    doc = buildconfig_doc("big")
    doc["metadata"]["annotations"] = {"padding": "x" * (BODY_LIMIT + 1)}
    response = await env.call("POST", "buildconfigs", json=doc)
    assert response.status == 413
    status_of(await response.json(), 413, "RequestEntityTooLarge")

    async def chunks() -> Any:
        # No Content-Length: the cap applies while reading.
        text = json.dumps(doc).encode()
        for i in range(0, len(text), 4096):
            yield text[i : i + 4096]

    response = await env.call(
        "POST",
        "buildconfigs",
        data=chunks(),
        content_type="application/json",
    )
    assert response.status == 413
    status_of(await response.json(), 413, "RequestEntityTooLarge")
    assert await env.snapshot() == before


async def test_namespace_checks(env: Env) -> None:
    response = await env.call("GET", "buildconfigs", namespace="Not_A_Label")
    assert response.status == 400
    body = await response.json()
    status_of(body, 400, "BadRequest")
    assert "Not_A_Label" in body["message"]

    doc = buildconfig_doc("app", namespace="other")
    response = await env.call("POST", "buildconfigs", json=doc)
    assert response.status == 400
    assert "namespace" in (await response.json())["message"]

    await env.create_bc("app")
    response = await env.call("PUT", "buildconfigs/app", json=buildconfig_doc("different"))
    assert response.status == 400
    assert "name" in (await response.json())["message"]


async def test_namespaces_are_separate(env: Env) -> None:
    await env.create_bc("app", namespace="team-a")
    response = await env.call(
        "POST", "buildconfigs", json=buildconfig_doc("app", namespace="team-a"), namespace="team-a"
    )
    assert response.status == 409
    assert (await env.call("GET", "buildconfigs/app")).status == 404
    listed = await (await env.call("GET", "buildconfigs", namespace="team-a")).json()
    assert [i["metadata"]["namespace"] for i in listed["items"]] == ["team-a"]


async def test_unknown_route_and_method_are_status(env: Env) -> None:
    response = await env.client.get("/apis/build.openshift.io/v1/nothing", headers=env.auth)
    assert response.status == 404
    status_of(await response.json(), 404, "NotFound")
    response = await env.call("PATCH", "buildconfigs")
    assert response.status == 405
    body = await response.json()
    status_of(body, 405, "MethodNotAllowed")


async def test_buildconfig_list_pages_with_limit_and_continue(env: Env) -> None:
    for name in ("a", "b", "c", "d", "e"):
        await env.create_bc(name)
    seen: list[str] = []
    token = ""
    while True:
        params = {"limit": "2", **({"continue": token} if token else {})}
        response = await env.call("GET", "buildconfigs", params=params)
        assert response.status == 200
        body = await response.json()
        seen += [item["metadata"]["name"] for item in body["items"]]
        token = body["metadata"].get("continue", "")
        if not token:
            break
    assert seen == ["a", "b", "c", "d", "e"]
    bad = await env.call("GET", "buildconfigs", params={"limit": "2", "continue": "%%%"})
    assert bad.status == 400
