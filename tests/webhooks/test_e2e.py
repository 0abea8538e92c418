"""End to end: a signed GitHub push to ``/hooks/github`` becomes a real image in a real
registry, built by buildah (LocalExecutor) from the pushed commit served by ``git daemon``.

The push names the *first* of two commits on main, as a webhook delayed behind a second push
would: the build must check out exactly that commit, not the branch tip.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from tests.intake.payloads import document, encode
from tests.support.gitrepo import GitRepoFactory
from tests.support.registry import Registry
from tests.webhooks.conftest import SECRET, github_headers, trigger
from triggerd.engine import Engine
from triggerd.executors.local import LocalExecutor
from triggerd.logs import LogStore
from triggerd.model.builds import Build
from triggerd.settings import RegistrySettings, Settings
from triggerd.store.sqlite import SqliteStore
from triggerd.web import webhooks
from triggerd.web.app import make_app

BUILD_TIMEOUT = 300.0


def _push_payload(template: dict[str, Any], url: str, commit: str) -> bytes:
    """The octokit push example (the first push of a branch), re-aimed at our repository,
    branch and commit."""
    doc = json.loads(json.dumps(template))
    for key in ("html_url", "clone_url", "ssh_url", "git_url", "url"):
        doc["repository"][key] = url
    doc["repository"]["default_branch"] = "main"
    doc["ref"] = "refs/heads/main"
    doc["after"] = commit
    for entry in (doc["head_commit"], *doc["commits"]):
        entry["id"] = commit
        entry["message"] = "the commit to build"
    return encode(doc)


async def _wait_until_finished(engine: Engine, namespace: str, name: str) -> Build:
    async with asyncio.timeout(BUILD_TIMEOUT):
        while True:
            build = await engine.store.get_build(namespace, name)
            if build.phase.terminal:
                return build
            await engine.wait_for_change(5.0)


@pytest.mark.e2e
async def test_signed_push_to_the_org_route_builds_and_pushes_the_commit(
    tmp_path: Path,
    aiohttp_client: AiohttpClient,
    git_repo_factory: GitRepoFactory,
    registry: Registry,
    base_image: str,
) -> None:
    repo = git_repo_factory(
        "webhook-e2e",
        files={
            "Dockerfile": f"FROM {base_image}\nCOPY version.txt /version.txt\n"
            "RUN cat /version.txt\n",
            "version.txt": "first\n",
        },
    )
    pushed = repo.rev_parse("main")
    repo.commit({"version.txt": "second\n"}, message="moved on", branch="main")
    assert repo.rev_parse("main") != pushed

    image_repo = "webhook-e2e/app"
    settings = Settings(
        data_dir=tmp_path,
        api_tokens=("e2e-token",),
        max_concurrent_builds=1,
        registries={registry.host: RegistrySettings(insecure=True)},
    )
    logs = LogStore(tmp_path / "logs")
    executor = LocalExecutor(settings, logs, tmp_path / "workspaces")
    engine = Engine(
        settings=settings,
        store=SqliteStore(tmp_path / "triggerd.db"),
        executor=executor,
        logs=logs,
    )
    client = await aiohttp_client(make_app(engine, logs, settings, extra_routes=webhooks.ROUTES))
    doc = {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {
            "source": {"type": "Git", "git": {"uri": repo.git_url, "ref": "main"}},
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {"to": {"kind": "DockerImage", "name": registry.ref(image_repo, "latest")}},
            "triggers": [trigger("GitHub")],
        },
    }
    await engine.create_buildconfig(doc)

    body = _push_payload(document("github/push-branch-created.json"), repo.git_url, pushed)
    response = await client.post(
        "/hooks/github", data=body, headers=github_headers(body, delivery="e2e-1", secret=SECRET)
    )
    answer = await response.json()
    assert response.status == 201, answer
    [entry] = answer["triggered"]
    assert entry["revision"] == pushed

    build = await _wait_until_finished(engine, entry["namespace"], entry["name"])
    log_text = logs.read(build.namespace, build.name).decode(errors="replace")
    assert build.phase.value == "Complete", log_text[-3000:]
    status = build.to_dict()["status"]
    digest = await asyncio.to_thread(registry.head_digest, image_repo, "latest")
    assert digest is not None and digest == status["output"]["to"]["imageDigest"]
    assert build.to_dict()["spec"]["revision"]["git"]["commit"] == pushed
    assert "first" in log_text and "second" not in log_text

    # The image itself says which commit it was built from.
    manifest = await asyncio.to_thread(registry.manifest, image_repo, digest)
    assert manifest is not None
    config_digest = manifest.json()["config"]["digest"]
    blob = await asyncio.to_thread(
        registry.request, "GET", f"/v2/{image_repo}/blobs/{config_digest}"
    )
    labels = json.loads(blob.body)["config"]["Labels"]
    assert labels["io.openshift.build.commit.id"] == pushed
