"""No secret leaves a real ``triggerd serve``: a whole scenario through the REST API and the
webhook routes (accepted, refused, malformed, a build that runs and fails), then the server's
log file, every response body and header, every build log and ``/metrics`` are searched for
every secret the scenario used: API bearer tokens (right and wrong), webhook trigger secrets
(inline and referenced), a Generic trigger's bearer secret, URL secrets guessed wrong, and
the contents of a pushSecret file (the registry password and its base64 auth).

(BuildConfig objects themselves are left out of the search: an inline trigger secret is part
of the config, as in OpenShift, and is served to API token holders so an export round-trips.)
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.server import API, TOKEN, TriggerdServer
from tests.reliability.helpers import push_body, push_headers

API_TOKEN = "rel-api-token-6c1d0e9f2a7b44"
WRONG_TOKEN = "rel-wrong-token-93b8c2d1e0f5"
HOOK_SECRET = "rel-hook-secret-2b7e151628ae"
REF_SECRET = "rel-ref-secret-d2a6f0c4b8e1"
GENERIC_SECRET = "rel-generic-secret-4f1a9c3e"
BEARER_SECRET = "rel-bearer-secret-7e3a1b5c9d"
GUESSED = "rel-guessed-url-secret-0a9b8c"
PUSH_PASSWORD = "rel-push-password-5d4c3b2a19"
PUSH_AUTH = base64.b64encode(f"robot:{PUSH_PASSWORD}".encode()).decode()
SECRETS = (
    API_TOKEN,
    WRONG_TOKEN,
    HOOK_SECRET,
    REF_SECRET,
    GENERIC_SECRET,
    BEARER_SECRET,
    GUESSED,
    PUSH_PASSWORD,
    PUSH_AUTH,
)
#: Fails at once (nothing listens on port 1): the build runs its fetch and ends Failed.
GIT_URI = "git://127.0.0.1:1/none.git"
TERMINAL = {"Complete", "Failed", "Error", "Cancelled"}


def _config() -> dict[str, Any]:
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": "secretive", "namespace": "default"},
        "spec": {
            "source": {"type": "Git", "git": {"uri": GIT_URI, "ref": "main"}},
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {
                "to": {"kind": "DockerImage", "name": "127.0.0.1:1/rel/secretive:latest"},
                "pushSecret": {"name": "push-creds"},
            },
            "triggers": [
                {"type": "GitHub", "github": {"secret": HOOK_SECRET}},
                {"type": "GitLab", "gitlab": {"secretReference": {"name": "hook-secret"}}},
                {
                    "type": "Generic",
                    "generic": {
                        "secret": GENERIC_SECRET,
                        "bearerSecretReference": {"name": "generic-bearer"},
                    },
                },
            ],
        },
    }


async def test_no_secret_in_the_server_log_responses_build_logs_or_metrics(
    tmp_path: Path,
) -> None:
    auth_file = tmp_path / "push-auth.json"
    auth_file.write_text(json.dumps({"auths": {"127.0.0.1:1": {"auth": PUSH_AUTH}}}))
    auth_file.chmod(0o600)
    server = TriggerdServer(
        tmp_path / "server",
        {
            "apiTokens": [TOKEN, API_TOKEN],
            "maxConcurrentBuilds": 1,
            "logLevel": "debug",
            "secrets": {
                "push-creds": {"path": str(auth_file)},
                "hook-secret": {"data": {"WebHookSecretKey": REF_SECRET}},
                "generic-bearer": {"data": {"WebHookSecretKey": BEARER_SECRET}},
            },
        },
    )
    await asyncio.to_thread(server.start)
    texts: list[str] = []
    try:
        async with aiohttp.ClientSession(base_url=server.url) as session:

            async def call(
                method: str,
                path: str,
                *,
                expect: int,
                keep: bool = True,
                **kwargs: Any,
            ) -> str:
                async with session.request(method, path, **kwargs) as response:
                    text = await response.text()
                    assert response.status == expect, (method, path, response.status, text)
                    if keep:
                        texts.append(text)
                    texts.extend(f"{k}: {v}" for k, v in response.headers.items())
                    return text

            bearer = {"Authorization": f"Bearer {API_TOKEN}"}
            configs = f"{API}/buildconfigs"
            hook = f"{configs}/secretive/webhooks"
            await call("GET", f"{API}/builds", expect=401)
            await call(
                "GET",
                f"{API}/builds",
                expect=401,
                headers={"Authorization": f"Bearer {WRONG_TOKEN}"},
            )
            await call("POST", configs, expect=201, keep=False, json=_config(), headers=bearer)

            body = push_body(GIT_URI, 1)
            github = push_headers(body, "sec-1", secret=HOOK_SECRET)
            await call(
                "POST", f"{hook}/{HOOK_SECRET}/github", expect=201, data=body, headers=github
            )
            await call("POST", f"{hook}/{GUESSED}/github", expect=401, data=body, headers=github)
            wrong = push_headers(body, "sec-2", secret=WRONG_TOKEN)
            await call("POST", "/hooks/github", expect=401, data=body, headers=wrong)
            await call("POST", f"{hook}/{HOOK_SECRET}/github", expect=401, data=body, headers=wrong)
            await call(
                "POST",
                f"{hook}/{HOOK_SECRET}/github",
                expect=400,
                data=b"{",
                headers=push_headers(b"{", "sec-3", secret=HOOK_SECRET),
            )
            gitlab = {"X-Gitlab-Event": "Push Hook", "Content-Type": "application/json"}
            await call(
                "POST",
                f"{hook}/{REF_SECRET}/gitlab",
                expect=401,
                data=b"{}",
                headers={**gitlab, "X-Gitlab-Token": GUESSED},
            )
            generic = b'{"git": {"ref": "main"}}'
            plain = {"Content-Type": "application/json"}
            await call(
                "POST",
                f"{hook}/{GENERIC_SECRET}/generic",
                expect=201,
                data=generic,
                headers={**plain, "Authorization": f"Bearer {BEARER_SECRET}"},
            )
            await call(
                "POST",
                f"{hook}/{GENERIC_SECRET}/generic",
                expect=401,
                data=generic,
                headers={**plain, "Authorization": f"Bearer {GUESSED}"},
            )
            await call("GET", f"{hook}/{HOOK_SECRET}/github", expect=405)

            name = json.loads(
                await call(
                    "POST",
                    f"{configs}/secretive/instantiate",
                    expect=201,
                    json={"kind": "BuildRequest", "metadata": {"name": "secretive"}},
                    headers=bearer,
                )
            )["metadata"]["name"]

            async def finished() -> list[dict[str, Any]]:
                async with session.get(f"{API}/builds", headers=bearer) as response:
                    items: list[dict[str, Any]] = (await response.json())["items"]
                return items

            async with asyncio.timeout(120):
                while True:
                    items = await finished()
                    if items and all(b["status"]["phase"] in TERMINAL for b in items):
                        break
                    async with session.get(
                        f"{API}/builds/{name}/log?follow=true", headers=bearer
                    ) as response:
                        await response.read()  # returns when that build ends
            assert any(b["status"]["phase"] == "Failed" for b in items), items
            for build in items:
                log = await call(
                    "GET",
                    f"{API}/builds/{build['metadata']['name']}/log",
                    expect=200,
                    headers=bearer,
                )
                assert log.strip()
            texts.append(json.dumps(items))
            await call("GET", "/metrics", expect=200, headers=bearer)
            await call("GET", "/openapi.json", expect=200, headers=bearer)
    finally:
        server.stop()
    logged = server.log_text()
    assert "/webhooks/{secret}/github" in logged  # the scenario did reach the log
    assert "refused (unauthorized)" in logged
    everything = logged + "\n".join(texts)
    for secret in SECRETS:
        assert secret not in everything, secret
        assert secret[:12] not in everything, secret
