"""Webhook secrets defined by ``path`` in the settings (``secrets: {name: {path: FILE}}``):
read as the host executor reads path secrets — a file holds the value, a directory (a
mounted Kubernetes Secret) holds one file per key — and read again after a short cache."""

from __future__ import annotations

import time
from pathlib import Path

from pytest_aiohttp import AiohttpClient

from tests.intake.payloads import raw
from tests.webhooks.conftest import Hooks, config_path, github_headers, start_hooks
from triggerd import engine as engine_module
from triggerd.settings import SecretSettings

PUSH = raw("github/push-many-commits.json")
FILE_SECRET = "from-a-file-93b1c2"
DIR_SECRET = "from-a-mounted-secret-4e7d"


def hook(name: str) -> dict[str, object]:
    return {"type": "GitHub", "github": {"secretReference": {"name": name}}}


async def start(tmp_path: Path, aiohttp_client: AiohttpClient) -> Hooks:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(FILE_SECRET + "\n")  # as `echo ... > file` writes it
    mounted = tmp_path / "mounted"  # the layout of a Secret volume: one file per key
    mounted.mkdir()
    (mounted / "WebHookSecretKey").write_text(DIR_SECRET)
    secrets = {
        "file-secret": SecretSettings(path=str(secret_file)),
        "dir-secret": SecretSettings(path=str(mounted)),
        "missing-file": SecretSettings(path=str(tmp_path / "nowhere")),
    }
    return await start_hooks(tmp_path, aiohttp_client, secrets=secrets)


async def test_a_path_secret_verifies_deliveries(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    hooks = await start(tmp_path, aiohttp_client)
    await hooks.add_config("file", triggers=[hook("file-secret")])
    await hooks.add_config("dir", triggers=[hook("dir-secret")])
    await hooks.add_config("gone", triggers=[hook("missing-file")])

    for config, secret in (("file", FILE_SECRET), ("dir", DIR_SECRET)):
        # OpenShift's URL carries the secret itself; the signature is checked with it too
        path = config_path(config, "github", secret=secret)
        reply = await hooks.post(path, PUSH, github_headers(PUSH, secret=secret))
        assert reply.status == 201, reply.text
        wrong = github_headers(PUSH, secret="not-it")
        assert (await hooks.post(path, PUSH, wrong)).status == 401
        other = config_path(config, "github", secret="not-it")
        assert (await hooks.post(other, PUSH, wrong)).status in (401, 404)
    # the org-wide route picks the config whose secret verifies
    reply = await hooks.post("/hooks/github", PUSH, github_headers(PUSH, secret=DIR_SECRET))
    assert reply.status == 201, reply.text
    # a secret whose file is missing has no value: nothing verifies against it
    assert hooks.engine.named_secret("missing-file") is None


async def test_a_rotated_secret_file_is_read_again(
    tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    hooks = await start(tmp_path, aiohttp_client)
    assert hooks.engine.named_secret("file-secret") == FILE_SECRET
    (tmp_path / "webhook-secret").write_text("rotated-value")
    assert hooks.engine.named_secret("file-secret") == FILE_SECRET  # cached for a moment
    stale = time.monotonic() - engine_module.SECRET_FILE_CACHE_SECONDS - 1
    hooks.engine._secret_files = {
        key: (stale, values) for key, (_, values) in hooks.engine._secret_files.items()
    }
    assert hooks.engine.named_secret("file-secret") == "rotated-value"
    assert hooks.engine.named_secret("dir-secret", "other-key") is None
