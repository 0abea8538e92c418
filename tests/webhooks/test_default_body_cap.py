"""The default webhook body cap (25 MiB, GitHub's maximum payload) over HTTP, with settings
loaded as ``triggerd serve`` loads them from a file that does not set maxBodyBytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from tests.fakes import FakeExecutor
from tests.webhooks.conftest import github_headers, read, status_of
from triggerd import settings
from triggerd.engine import Engine
from triggerd.logs import LogStore
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore
from triggerd.web import webhooks
from triggerd.web.app import make_app

CAP = 25 * 1024 * 1024
_CHUNK = b" " * (1024 * 1024)  # one buffer, sent again and again: no copies of the body


async def spaces(total: int) -> AsyncIterator[bytes]:
    """``total`` bytes of JSON whitespace, streamed (chunked, no Content-Length)."""
    left = total
    while left > 0:
        step = min(left, len(_CHUNK))
        yield _CHUNK[:step]  # the full slice is the buffer itself, not a copy
        left -= step


async def default_client(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> tuple[TestClient[Any, Any], Engine]:
    path = tmp_path / "triggerd.yaml"
    path.write_text(f"dataDir: {tmp_path / 'data'}\napiTokens: [t0123456789abcdef]\n")
    loaded = settings.load(path, environ={})
    assert loaded.max_body_bytes == CAP
    logs = LogStore(loaded.data_dir / "logs")
    engine = Engine(
        settings=loaded,
        store=SqliteStore(loaded.data_dir / "triggerd.db"),
        executor=FakeExecutor(logs),
        logs=logs,
    )
    app = make_app(engine, logs, loaded, extra_routes=webhooks.ROUTES)
    return await aiohttp_client(app), engine


async def test_a_streamed_body_just_over_25_mib_is_413_and_one_at_the_cap_is_read(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    client, engine = await default_client(tmp_path, aiohttp_client)
    headers = github_headers(b"", delivery="big")  # no signature: never gets that far
    headers.pop("X-Hub-Signature-256")
    async with asyncio.timeout(30):
        over = await read(await client.post("/hooks/github", data=spaces(CAP + 1), headers=headers))
    assert over.status == 413, over.text
    status_of(over.body, 413, "RequestEntityTooLarge")
    assert "exceeds the limit" in over.body["message"]
    # Exactly at the cap the body is read: whitespace is not a JSON document (400), which
    # shows the limit is 25 MiB and not lower.
    async with asyncio.timeout(30):
        at = await read(await client.post("/hooks/github", data=spaces(CAP), headers=headers))
    assert at.status == 400, at.text
    assert "JSON" in at.body["message"], at.body
    assert (await engine.store.list_builds(BuildQuery())).builds == ()
