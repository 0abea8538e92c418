"""Instantiate, list (selectors, pages), read, cancel by PATCH, clone and delete Builds over
HTTP; binary BuildConfigs refused by instantiate."""

from __future__ import annotations

from typing import Any

from tests.support.processes import async_wait_for
from tests.web.conftest import NS, Env
from tests.web.test_buildconfigs import status_of
from triggerd.model import requests
from triggerd.planning import archives

MERGE = "application/merge-patch+json"
CANCEL = {"status": {"cancelled": True}}


async def phase(env: Env, name: str) -> str:
    return str((await env.build(name))["status"]["phase"])


async def wait_phase(env: Env, name: str, wanted: str) -> None:
    async def reached() -> bool:
        return await phase(env, name) == wanted

    await async_wait_for(reached, timeout=10, what=f"{name} {wanted}")


async def names(env: Env, params: dict[str, str] | None = None) -> list[str]:
    response = await env.call("GET", "builds", params=params)
    assert response.status == 200, await response.text()
    return [b["metadata"]["name"] for b in (await response.json())["items"]]


async def test_instantiate_numbers_builds_and_answers_201(env: Env) -> None:
    await env.create_bc()
    first = await env.start()
    assert first["kind"] == "Build"
    assert first["metadata"]["name"] == "app-1"
    assert first["metadata"]["labels"]["openshift.io/build-config.name"] == "app"
    assert first["status"]["phase"] == "New"
    second = await env.start(body={"kind": "BuildRequest", "metadata": {"name": "app"}})
    assert second["metadata"]["name"] == "app-2"
    # The 201 came after the store returned: the build is readable at once.
    assert (await env.build("app-2"))["metadata"]["uid"] == second["metadata"]["uid"]
    bc = await (await env.call("GET", "buildconfigs/app")).json()
    assert bc["status"]["lastVersion"] == 2


async def test_instantiate_with_overrides_and_yaml(env: Env) -> None:
    await env.create_bc()
    text = (
        "kind: BuildRequest\napiVersion: build.openshift.io/v1\nmetadata: {name: app}\n"
        "revision: {type: Git, git: {commit: 0123abcd}}\n"
        "env: [{name: A, value: '1'}]\n"
    )
    response = await env.call(
        "POST", "buildconfigs/app/instantiate", data=text, content_type="application/yaml"
    )
    assert response.status == 201, await response.text()
    build = await response.json()
    assert build["spec"]["revision"]["git"]["commit"] == "0123abcd"
    assert {"name": "A", "value": "1"} in build["spec"]["strategy"]["dockerStrategy"]["env"]


async def test_invalid_build_request_changes_nothing(env: Env) -> None:
    await env.create_bc()
    before = await env.snapshot()
    body = {"kind": "BuildRequest", "revision": {"git": {"commit": "not-hex!"}}}
    response = await env.call("POST", "buildconfigs/app/instantiate", json=body)
    assert response.status == 422
    payload = await response.json()
    status_of(payload, 422, "Invalid")
    assert [c["field"] for c in payload["details"]["causes"]] == ["revision.git.commit"]
    assert await env.snapshot() == before


async def test_label_selector_filters(env: Env) -> None:
    await env.create_bc("web")
    await env.create_bc("api")
    await env.start("web")
    await env.start("api")
    await env.start("api", body={"metadata": {"labels": {"tier": "backend"}}})
    assert await names(env) == ["api-1", "api-2", "web-1"]
    assert await names(env, {"labelSelector": "buildconfig=web"}) == ["web-1"]
    assert await names(env, {"labelSelector": "openshift.io/build-config.name==api"}) == [
        "api-1",
        "api-2",
    ]
    assert await names(env, {"labelSelector": "buildconfig!=api"}) == ["web-1"]
    assert await names(env, {"labelSelector": "tier"}) == ["api-2"]
    assert await names(env, {"labelSelector": "!tier,buildconfig in (api,web)"}) == [
        "api-1",
        "web-1",
    ]
    assert await names(env, {"labelSelector": "buildconfig notin (web)"}) == ["api-1", "api-2"]
    response = await env.call("GET", "builds", params={"labelSelector": "a in (x"})
    assert response.status == 400
    assert "labelSelector" in (await response.json())["message"]
    configs = await env.call("GET", "buildconfigs", params={"labelSelector": "nothing=here"})
    assert (await configs.json())["items"] == []


async def test_pagination(env: Env) -> None:
    await env.create_bc()
    for _ in range(5):
        await env.start()
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"continue": token} if token else {})
        response = await env.call("GET", "builds", params=params)
        body: dict[str, Any] = await response.json()
        assert body["kind"] == "BuildList"
        assert body["metadata"]["resourceVersion"]
        seen += [b["metadata"]["name"] for b in body["items"]]
        pages += 1
        token = body["metadata"].get("continue")
        if not token:
            break
    assert seen == [f"app-{n}" for n in range(1, 6)]
    assert pages == 3
    for bad in ({"limit": "-1"}, {"limit": "x"}, {"continue": "garbage"}):
        response = await env.call("GET", "builds", params=bad)
        assert response.status == 400, bad
        status_of(await response.json(), 400, "BadRequest")


async def test_patch_cancels_a_new_build(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.start()
    await env.executor.wait_started("default", "app-1")
    assert await phase(env, "app-2") == "New"  # Serial: waits behind app-1
    for content_type in (MERGE, "application/strategic-merge-patch+json", "application/json"):
        response = await env.call("PATCH", "builds/app-2", json=CANCEL, content_type=content_type)
        assert response.status == 200, await response.text()
        build = await response.json()
        assert build["status"]["phase"] == "Cancelled"
        assert build["status"]["cancelled"] is True
    assert await phase(env, "app-2") == "Cancelled"


async def test_patch_cancels_a_running_build(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.executor.wait_started("default", "app-1")
    response = await env.call("PATCH", "builds/app-1", json=CANCEL, content_type=MERGE)
    assert response.status == 200
    await wait_phase(env, "app-1", "Cancelled")
    assert ("default", "app-1") in env.executor.cancel_calls


async def test_cancel_of_a_finished_build_conflicts(env: Env) -> None:
    await env.create_bc()
    await env.start()
    env.executor.finish("default", "app-1")
    await wait_phase(env, "app-1", "Complete")
    response = await env.call("PATCH", "builds/app-1", json=CANCEL, content_type=MERGE)
    assert response.status == 409
    status_of(await response.json(), 409, "Conflict")


async def test_unsupported_patches(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.executor.wait_started("default", "app-1")  # settled: nothing moves by itself
    before = await env.snapshot()
    cases: list[tuple[Any, str]] = [
        ({"spec": {"output": {"to": {"name": "x"}}}}, "spec.output.to.name"),
        ({"status": {"phase": "Complete"}}, "status.phase"),
        ({"status": {"cancelled": False}}, "status.cancelled"),
        ({"metadata": {"labels": {"a": "b"}}, "status": {"cancelled": True}}, "metadata.labels.a"),
    ]
    for patch, field in cases:
        response = await env.call("PATCH", "builds/app-1", json=patch, content_type=MERGE)
        assert response.status == 422, patch
        body = await response.json()
        status_of(body, 422, "Invalid")
        assert field in [c["field"] for c in body["details"]["causes"]]
    response = await env.call(
        "PATCH", "builds/app-1", json=[{"op": "add"}], content_type="application/json-patch+json"
    )
    assert response.status == 415
    response = await env.call("PATCH", "builds/app-1", data="{", content_type=MERGE)
    assert response.status == 400
    assert await env.snapshot() == before
    response = await env.call("PATCH", "builds/nope", json=CANCEL, content_type=MERGE)
    assert response.status == 404


async def test_delete_build(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.start()
    await env.executor.wait_started("default", "app-1")
    response = await env.call("DELETE", "builds/app-2")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "Success" and body["details"]["name"] == "app-2"
    assert await names(env) == ["app-1"]
    response = await env.call("DELETE", "builds/app-1")  # running: cancelled first
    assert response.status == 200
    assert ("default", "app-1") in env.executor.cancel_calls
    assert await names(env) == []
    assert not env.logs.exists("default", "app-1")
    assert (await env.call("DELETE", "builds/app-1")).status == 404


async def test_delete_buildconfig_takes_its_builds(env: Env) -> None:
    await env.create_bc()
    await env.start()
    await env.start()
    assert (await env.call("DELETE", "buildconfigs/app")).status == 200
    assert await names(env) == []


CLONE_REQUEST = {"kind": "BuildRequest", "apiVersion": "build.openshift.io/v1"}


async def test_clone_starts_a_build_like_the_earlier_one(env: Env) -> None:
    await env.create_bc(
        strategy={"type": "Docker", "dockerStrategy": {"env": [{"name": "KEEP", "value": "c"}]}}
    )
    commit = "0123456789abcdef0123456789abcdef01234567"
    await env.start(
        body={
            "kind": "BuildRequest",
            "metadata": {"name": "app", "labels": {"who": "ada"}},
            "revision": {"type": "Git", "git": {"commit": commit, "message": "Fix"}},
            "env": [{"name": "FROM_REQUEST", "value": "1"}],
            "dockerStrategyOptions": {"buildArgs": [{"name": "ARG", "value": "a"}]},
        }
    )
    # The BuildConfig moves on; the clone is still like the build it clones.
    await env.start()
    body = {
        **CLONE_REQUEST,
        "metadata": {"name": "app-1"},
        "env": [{"name": "FROM_CLONE", "value": "2"}],
    }
    response = await env.call("POST", "builds/app-1/clone", json=body)
    assert response.status == 201, await response.text()
    clone = await response.json()
    assert clone["metadata"]["name"] == "app-3"
    assert clone["metadata"]["annotations"]["openshift.io/build.clone-of"] == "app-1"
    assert clone["metadata"]["annotations"]["openshift.io/build.number"] == "3"
    assert clone["metadata"]["labels"]["who"] == "ada"
    assert clone["metadata"]["labels"]["openshift.io/build-config.name"] == "app"
    assert clone["spec"]["revision"]["git"]["commit"] == commit
    assert clone["spec"]["triggeredBy"] == [{"message": "Manually triggered"}]
    docker = clone["spec"]["strategy"]["dockerStrategy"]
    assert docker["env"] == [
        {"name": "KEEP", "value": "c"},
        {"name": "FROM_REQUEST", "value": "1"},
        {"name": "FROM_CLONE", "value": "2"},
    ]
    assert docker["buildArgs"] == [{"name": "ARG", "value": "a"}]
    # An empty body is a plain clone too; the build must exist.
    response = await env.call("POST", "builds/app-2/clone")
    assert response.status == 201, await response.text()
    assert (await response.json())["metadata"]["name"] == "app-4"
    assert (await env.call("POST", "builds/app-99/clone")).status == 404
    # The body names the build it clones, as OpenShift's BuildRequest does.
    response = await env.call(
        "POST", "builds/app-1/clone", json={**CLONE_REQUEST, "metadata": {"name": "app-2"}}
    )
    assert response.status == 422


async def test_binary_configs_need_their_input(env: Env) -> None:
    await env.create_bc("bin", source={"type": "Binary", "binary": {}})
    before = await env.snapshot()
    response = await env.call("POST", "buildconfigs/bin/instantiate", json=None)
    assert response.status == 400
    assert "cannot start a binary build without input" in (await response.json())["message"]
    assert await env.snapshot() == before
    # A binary build (as instantiatebinary makes it) is cloned with its upload, while the
    # upload is kept.
    digest = "sha256:" + "ab" * 32
    await env.engine.instantiate(
        "default",
        "bin",
        requests.BuildRequest(annotations={archives.INPUT_ANNOTATION: digest}),
    )
    response = await env.call("POST", "builds/bin-1/clone")
    assert response.status == 409
    assert "no longer stored" in (await response.json())["message"]
    upload = archives.upload_path(env.settings.data_dir.resolve(), digest)
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"the upload")
    response = await env.call("POST", "builds/bin-1/clone")
    assert response.status == 201, await response.text()
    assert (await response.json())["metadata"]["annotations"][archives.INPUT_ANNOTATION] == digest
    # A request cannot point a clone at another upload.
    body = {**CLONE_REQUEST, "metadata": {"annotations": {archives.INPUT_ANNOTATION: digest}}}
    response = await env.call("POST", "builds/bin-1/clone", json=body)
    assert response.status == 422
    causes = (await response.json())["details"]["causes"]
    assert [c["field"] for c in causes] == [f"metadata.annotations.{archives.INPUT_ANNOTATION}"]


async def test_a_clone_is_the_earlier_build_whatever_the_config_says_now(env: Env) -> None:
    """POST builds/{name}/clone copies the build's own spec (OpenShift's generator.Clone):
    the Dockerfile, env, build args, output and revision it was built with, not the ones
    the BuildConfig has by now."""
    source = {
        "type": "Git",
        "git": {"uri": "https://git.example.com/team/app.git", "ref": "main"},
        "dockerfile": "FROM busybox\nRUN echo one\n",
    }
    strategy = {
        "type": "Docker",
        "dockerStrategy": {
            "env": [{"name": "MODE", "value": "one"}],
            "buildArgs": [{"name": "V", "value": "1"}],
        },
    }
    await env.create_bc(source=source, strategy=strategy)
    commit = "0123456789abcdef0123456789abcdef01234567"
    original = await env.start(
        body={"kind": "BuildRequest", "revision": {"git": {"commit": commit}}}
    )
    config = await (await env.call("GET", "buildconfigs/app")).json()
    config["spec"]["source"]["dockerfile"] = "FROM busybox\nRUN echo two\n"
    config["spec"]["strategy"]["dockerStrategy"]["env"] = [{"name": "MODE", "value": "two"}]
    config["spec"]["strategy"]["dockerStrategy"]["buildArgs"] = [{"name": "V", "value": "2"}]
    config["spec"]["output"]["to"]["name"] = "127.0.0.1:5000/team/moved:latest"
    config["spec"]["runPolicy"] = "Parallel"
    response = await env.call("PUT", "buildconfigs/app", json=config)
    assert response.status == 200, await response.text()
    # A build started now follows the config ...
    current = await env.start()
    assert current["spec"]["source"]["dockerfile"] == "FROM busybox\nRUN echo two\n"
    # ... its clone the build it clones.
    response = await env.call("POST", "builds/app-1/clone", json=CLONE_REQUEST)
    assert response.status == 201, await response.text()
    clone = await response.json()
    assert clone["metadata"]["name"] == "app-3"
    for key in ("source", "strategy", "output", "revision"):
        assert clone["spec"][key] == original["spec"][key], key
    assert clone["spec"]["source"]["dockerfile"] == "FROM busybox\nRUN echo one\n"
    assert clone["spec"]["strategy"]["dockerStrategy"]["env"] == [{"name": "MODE", "value": "one"}]
    assert clone["spec"]["revision"]["git"]["commit"] == commit
    assert clone["spec"]["triggeredBy"] == [{"message": "Manually triggered"}]
    # still a build of its config: numbered, labelled and queued under today's run policy
    assert clone["metadata"]["labels"]["openshift.io/build.start-policy"] == "Parallel"
    assert clone["metadata"]["annotations"]["openshift.io/build.clone-of"] == "app-1"
    assert clone["status"]["config"]["name"] == "app"
    assert (await env.build("app-3"))["spec"] == clone["spec"]
    # A clone cannot change what is built.
    body = {**CLONE_REQUEST, "revision": {"git": {"commit": "abcdef12"}}}
    response = await env.call("POST", "builds/app-1/clone", json=body)
    assert response.status == 422
    assert [c["field"] for c in (await response.json())["details"]["causes"]] == ["revision"]


async def test_a_build_request_cannot_set_triggerds_annotations(env: Env) -> None:
    await env.create_bc()
    before = await env.snapshot()
    annotations = {
        "triggerd.dev/privileged": "true",
        "triggerd.dev/cache-repository": "attacker.example.com/steal",
        "openshift.io/build.number": "99",
        "team.example.com/owner": "ada",
    }
    body = {"kind": "BuildRequest", "metadata": {"annotations": annotations}}
    response = await env.call("POST", "buildconfigs/app/instantiate", json=body)
    assert response.status == 422
    payload = await response.json()
    status_of(payload, 422, "Invalid")
    assert sorted(c["field"] for c in payload["details"]["causes"]) == [
        "metadata.annotations.openshift.io/build.number",
        "metadata.annotations.triggerd.dev/cache-repository",
        "metadata.annotations.triggerd.dev/privileged",
    ]
    assert await env.snapshot() == before
    body = {"kind": "BuildRequest", "metadata": {"annotations": {"team.example.com/owner": "a"}}}
    build = await env.start(body=body)
    assert build["metadata"]["annotations"]["team.example.com/owner"] == "a"


async def test_a_paused_config_refuses_manual_builds_and_clones(env: Env) -> None:
    await env.create_bc()
    first = (await env.start())["metadata"]["name"]
    await env.executor.wait_started(NS, first)  # it stays Running from here
    config = await (await env.call("GET", "buildconfigs/app")).json()
    config["metadata"]["annotations"] = {"openshift.io/build-config.paused": "true"}
    response = await env.call("PUT", "buildconfigs/app", json=config)
    assert response.status == 200, await response.text()
    before = await env.snapshot()
    for resource in ("buildconfigs/app/instantiate", f"builds/{first}/clone"):
        response = await env.call("POST", resource, json={"kind": "BuildRequest"})
        assert response.status == 409, (resource, await response.text())
        body = await response.json()
        status_of(body, 409, "Conflict")
        assert "is paused" in body["message"]
    assert await env.snapshot() == before
