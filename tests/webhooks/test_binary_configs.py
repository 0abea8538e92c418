"""Webhook deliveries for BuildConfigs with binary source: a delivery never brings the upload
such a build needs, so the config is answered as skipped (200, with the reason), nothing is
stored, and a redelivery gets the same answer; an upload still starts a build."""

from __future__ import annotations

from typing import Any

from tests.factories import buildconfig_doc
from tests.intake.payloads import raw
from tests.webhooks.conftest import NS, Hooks, config_path, github_headers, trigger
from tests.webhooks.test_http import _webhook_counts
from triggerd.model import builds, requests
from triggerd.model.buildconfigs import BuildConfig
from triggerd.web import webhooks

PUSH = raw("github/push-many-commits.json")


async def add_binary_config(hooks: Hooks, name: str = "bin") -> BuildConfig:
    doc = buildconfig_doc(name, source={"type": "Binary", "binary": {}})
    doc["spec"]["triggers"] = [trigger("Generic"), trigger("GitHub", branches=["*"])]
    return await hooks.engine.create_buildconfig(doc, namespace=NS)


def skipped_for_binary(body: Any, name: str = "bin") -> None:
    assert body["triggered"] == []
    [entry] = body["skipped"]
    assert entry["namespace"] == NS and entry["buildConfig"] == name
    assert entry["reason"].startswith("cannot start a binary build without input")
    assert "instantiatebinary" in entry["reason"]
    assert body["reason"] == entry["reason"]


async def counts(hooks: Hooks) -> dict[tuple[str, str], float]:
    return _webhook_counts(await (await hooks.client.get("/metrics")).text())


async def test_a_generic_delivery_for_a_binary_config_is_skipped(hooks: Hooks) -> None:
    await add_binary_config(hooks)
    before = await counts(hooks)
    reply = await hooks.post(config_path("bin", "generic"))
    assert reply.status == 200, reply.text
    skipped_for_binary(reply.body)
    assert await hooks.builds() == []
    config = await hooks.engine.store.get_buildconfig(NS, "bin")
    assert config.last_version == 0  # no build number was used up
    after = await counts(hooks)
    key = ("generic", webhooks.SKIPPED)
    assert after.get(key, 0.0) - before.get(key, 0.0) == 1


async def test_a_github_push_for_a_binary_config_is_skipped_every_time(hooks: Hooks) -> None:
    await add_binary_config(hooks)
    path = config_path("bin", "github")
    for _ in range(2):  # GitHub redelivers: the same answer, never a 5xx
        reply = await hooks.post(path, PUSH, github_headers(PUSH, delivery="d-bin"))
        assert reply.status == 200, reply.text
        skipped_for_binary(reply.body)
    assert await hooks.builds() == []
    # instantiatebinary (an upload) still starts the config's builds, numbered from 1.
    digest = "sha256:" + "c" * 64
    build = await hooks.engine.instantiate(
        NS, "bin", requests.BuildRequest(annotations={builds.BINARY_INPUT_ANNOTATION: digest})
    )
    assert build.name == "bin-1"
