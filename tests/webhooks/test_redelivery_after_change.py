"""A redelivery answers with the original builds even when today's evaluation of it would
start nothing (the config changed since the first delivery), and a delivery that started
nothing is not recorded, so its redelivery is evaluated afresh."""

from __future__ import annotations

import pytest

from tests.intake.payloads import raw
from tests.webhooks.conftest import (
    GITLAB_URI,
    JSON,
    NS,
    SECRET,
    Hooks,
    config_path,
    github_headers,
    trigger,
)

GITHUB_PUSH = raw("github/push-many-commits.json")  # refs/heads/main
GITLAB_PUSH = raw("gitlab/push-hook.json")  # refs/heads/master


async def set_ref(hooks: Hooks, ref: str, name: str = "app") -> None:
    doc = (await hooks.engine.store.get_buildconfig(NS, name)).to_dict()
    doc["spec"]["source"]["git"]["ref"] = ref
    await hooks.engine.replace_buildconfig(doc, namespace=NS, name=name)


def gitlab_headers(delivery: str) -> dict[str, str]:
    return {
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": SECRET,
        "X-Gitlab-Event-UUID": delivery,
        "Content-Type": JSON,
    }


@pytest.mark.parametrize("route", ["github-org", "gitlab-config"])
async def test_a_redelivery_after_the_ref_changed_answers_the_original_builds(
    hooks: Hooks, route: str
) -> None:
    if route == "github-org":
        await hooks.add_config(ref="main", triggers=[trigger("GitHub")])
        path, body, headers = (
            "/hooks/github",
            GITHUB_PUSH,
            github_headers(GITHUB_PUSH, delivery="same"),
        )
    else:
        await hooks.add_config(uri=GITLAB_URI, ref="master", triggers=[trigger("GitLab")])
        path, body, headers = config_path("app", "gitlab"), GITLAB_PUSH, gitlab_headers("same")
    first = await hooks.post(path, body, headers)
    assert first.status == 201, first.text
    assert [t["name"] for t in first.body["triggered"]] == ["app-1"]

    await set_ref(hooks, "release")
    again = await hooks.post(path, body, headers)
    assert again.status == 200, again.text
    assert again.body["duplicate"] is True
    assert again.body["triggered"] == first.body["triggered"]
    assert again.body["reason"] == "delivery same was already received; nothing new started"
    assert "skipped" not in again.body
    assert [b.name for b in await hooks.builds()] == ["app-1"]


async def test_a_delivery_that_started_nothing_is_evaluated_again(hooks: Hooks) -> None:
    await hooks.add_config(ref="release", triggers=[trigger("GitHub")])
    headers = github_headers(GITHUB_PUSH, delivery="skipped-first")
    first = await hooks.post("/hooks/github", GITHUB_PUSH, headers)
    assert first.status == 200, first.text
    assert first.body["triggered"] == [] and "duplicate" not in first.body
    assert "does not match" in first.body["reason"]
    # Not recorded: once the config accepts the push, the same delivery id starts a build.
    await set_ref(hooks, "main")
    again = await hooks.post("/hooks/github", GITHUB_PUSH, headers)
    assert again.status == 201, again.text
    assert [t["name"] for t in again.body["triggered"]] == ["app-1"]


async def test_a_skipped_delivery_without_an_id_reads_no_delivery_record(
    hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hooks.add_config(ref="release", triggers=[trigger("GitHub")])
    looked_up: list[str] = []
    store = hooks.engine.store
    original = store.delivered

    async def delivered(key: str) -> object:
        looked_up.append(key)
        return await original(key)

    monkeypatch.setattr(store, "delivered", delivered)
    reply = await hooks.post("/hooks/github", GITHUB_PUSH, github_headers(GITHUB_PUSH))
    assert reply.status == 200 and reply.body["triggered"] == []
    assert looked_up == []
    reply = await hooks.post(
        "/hooks/github", GITHUB_PUSH, github_headers(GITHUB_PUSH, delivery="with-id")
    )
    assert reply.status == 200 and "duplicate" not in reply.body
    assert looked_up == ["github:with-id"]
    # A delivery that starts builds is deduplicated by the store's instantiate alone.
    await set_ref(hooks, "main")
    reply = await hooks.post(
        "/hooks/github", GITHUB_PUSH, github_headers(GITHUB_PUSH, delivery="starts")
    )
    assert reply.status == 201, reply.text
    assert looked_up == ["github:with-id"]
