"""Redeliveries start nothing new: sequential, concurrent, and after a restart; and a 201
means the builds are already on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from tests.intake.payloads import raw
from tests.webhooks.conftest import (
    OTHER_SECRET,
    Hooks,
    config_path,
    github_headers,
    start_hooks,
    trigger,
)
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore

PUSH = raw("github/push-many-commits.json")


async def test_sequential_redelivery_answers_the_original_builds(hooks: Hooks) -> None:
    await hooks.add_config("a", triggers=[trigger("GitHub")])
    await hooks.add_config("b", triggers=[trigger("GitHub")])
    headers = github_headers(PUSH, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    first = await hooks.post("/hooks/github", PUSH, headers)
    assert first.status == 201, first.text
    for _ in range(3):
        again = await hooks.post("/hooks/github", PUSH, headers)
        assert again.status == 200, again.text
        assert again.body["duplicate"] is True
        assert again.body["triggered"] == first.body["triggered"]
        assert again.body["delivery"] == first.body["delivery"]
        assert again.body["reason"] == (
            "delivery 72d3162e-cc78-11e3-81ab-4c9367dc0958 was already received; "
            "nothing new started"
        )
    assert len(await hooks.builds()) == 2
    # Another delivery of the same push is a new request.
    other = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, delivery="another"))
    assert other.status == 201
    assert len(await hooks.builds()) == 4


async def test_twenty_concurrent_identical_deliveries_make_one_build(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    headers = github_headers(PUSH, delivery="concurrent-1")
    replies = await asyncio.gather(*(hooks.post("/hooks/github", PUSH, headers) for _ in range(20)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * 19 + [201], [r.text for r in replies]
    created = next(r for r in replies if r.status == 201)
    for reply in replies:
        assert reply.body["triggered"] == created.body["triggered"]
        assert reply.body.get("duplicate", False) is (reply.status == 200)
    assert [b.name for b in await hooks.builds()] == ["app-1"]


async def test_concurrent_duplicates_on_the_config_route(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    headers = github_headers(PUSH, delivery="concurrent-2")
    replies = await asyncio.gather(
        *(hooks.post(config_path("app", "github"), PUSH, headers) for _ in range(20))
    )
    assert sorted(r.status for r in replies) == [200] * 19 + [201]
    assert len(await hooks.builds()) == 1


async def test_redelivery_after_a_restart(tmp_path: Path, aiohttp_client: AiohttpClient) -> None:
    first_server = await start_hooks(tmp_path, aiohttp_client)
    await first_server.add_config(triggers=[trigger("GitHub")])
    headers = github_headers(PUSH, delivery="before-restart")
    first = await first_server.post("/hooks/github", PUSH, headers)
    assert first.status == 201, first.text
    await first_server.client.close()  # stops the engine and closes the store

    second_server = await start_hooks(tmp_path, aiohttp_client)
    again = await second_server.post("/hooks/github", PUSH, headers)
    assert again.status == 200, again.text
    assert again.body["duplicate"] is True
    assert again.body["triggered"] == first.body["triggered"]
    assert [b.name for b in await second_server.builds()] == ["app-1"]


async def test_deliveries_without_an_id_are_not_deduplicated(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    for _ in range(2):
        reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH))
        assert reply.status == 201 and reply.body["delivery"] is None
    assert len(await hooks.builds()) == 2


async def test_a_201_is_already_durable(hooks: Hooks) -> None:
    await hooks.add_config(triggers=[trigger("GitHub")])
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, delivery="durable"))
    assert reply.status == 201
    # A second connection to the file, as another process would open it after a crash.
    reader = SqliteStore(hooks.tmp_path / "triggerd.db")
    await reader.open()
    try:
        page = await reader.list_builds(BuildQuery())
        assert [b.name for b in page.builds] == [reply.body["triggered"][0]["name"]]
    finally:
        await reader.close()


async def test_generic_delivery_ids_are_per_buildconfig(hooks: Hooks) -> None:
    # Callers choose Generic ids themselves; two callers' "1" must not collide.
    await hooks.add_config("a", triggers=[trigger("Generic")])
    await hooks.add_config("b", triggers=[trigger("Generic")])
    headers = {"X-Delivery-ID": "1"}
    a = await hooks.post(config_path("a", "generic"), b"", headers)
    b = await hooks.post(config_path("b", "generic"), b"", headers)
    assert (a.status, b.status) == (201, 201)
    again = await hooks.post(config_path("a", "generic"), b"", headers)
    assert again.status == 200 and again.body["duplicate"] is True
    assert again.body["triggered"] == a.body["triggered"]


async def test_a_colliding_id_does_not_reveal_another_tenants_builds(hooks: Hooks) -> None:
    await hooks.add_config("mine", triggers=[trigger("GitHub")])
    await hooks.add_config("theirs", triggers=[trigger("GitHub", OTHER_SECRET)])
    first = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, delivery="same"))
    assert first.status == 201
    collision = await hooks.post(
        "/hooks/github", PUSH, github_headers(PUSH, delivery="same", secret=OTHER_SECRET)
    )
    assert collision.status == 200 and collision.body["duplicate"] is True
    assert collision.body["triggered"] == []
