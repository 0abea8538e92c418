"""Layer caches end to end: the registry cache (--cache-to/--cache-from) lets a build on
empty local storage reuse layers; a failed cache push retries the build without the cache;
the host cache is pruned by age."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter
from tests.support.gitrepo import GitRepoFactory
from tests.support.ports import free_port
from tests.support.registry import RegistryFactory
from triggerd.executors.base import Succeeded
from triggerd.model import builds
from triggerd.model.builds import Build
from triggerd.settings import BuildahSettings, RegistrySettings, SecretSettings, Settings

pytestmark = pytest.mark.e2e


def build_with(spec: dict[str, Any], name: str, annotations: dict[str, str]) -> Build:
    return builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": name, "namespace": "team", "annotations": annotations},
            "spec": copy.deepcopy(spec),
        }
    )


def fresh_storage(settings: Settings, where: Path) -> Settings:
    return dataclasses.replace(
        settings,
        buildah=BuildahSettings(root=str(where / "storage"), runroot=str(where / "run"),
                                push_retries=1),
    )  # fmt: skip


def spec(uri: str, output: str) -> dict[str, Any]:
    return {
        "source": {"type": "Git", "git": {"uri": uri, "ref": "main"}},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
        "output": {"to": {"kind": "DockerImage", "name": output}},
    }


def dockerfile(base: str) -> str:
    return f"FROM {base}\nRUN echo one > /one\nRUN echo two > /two\n"


async def test_registry_cache_serves_a_build_on_empty_storage(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    repo = git_repo_factory("cached", {"Dockerfile": dockerfile(env.base_image)})
    cache = f"{env.registry.host}/cache/cached"
    annotations = {"triggerd.dev/cache-repository": cache}
    image = env.registry.ref("cache/app", "v1")

    first = LocalExecutorFor(env, tmp_path / "a")
    outcome = await first.run(build_with(spec(repo.git_url, image), "cached-1", annotations))
    log = env.logs.read("team", "cached-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert f"--cache-to {cache}" in log
    tags = env.registry.request("GET", "/v2/cache/cached/tags/list")
    assert tags.status == 200 and json.loads(tags.body)["tags"]

    second = LocalExecutorFor(env, tmp_path / "b")  # nothing in local storage
    outcome = await second.run(build_with(spec(repo.git_url, image), "cached-2", annotations))
    log = env.logs.read("team", "cached-2").decode()
    assert isinstance(outcome, Succeeded), log
    assert log.count("Using cache") >= 2, log


async def test_failed_cache_push_retries_without_the_cache(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    repo = git_repo_factory("cache-down", {"Dockerfile": dockerfile(env.base_image)})
    unreachable = f"127.0.0.1:{free_port()}/cache/down"
    image = env.registry.ref("cache/down", "v1")
    executor = LocalExecutorFor(env, tmp_path / "c")
    outcome = await executor.run(
        build_with(spec(repo.git_url, image), "down-1",
                   {"triggerd.dev/cache-repository": unreachable})
    )  # fmt: skip
    log = env.logs.read("team", "down-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert "failed pushing cache to" in log
    assert "building again without it" in log
    assert env.registry.head_digest("cache/down", "v1") == outcome.digest


async def test_host_cache_is_pruned_by_age(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    repo = git_repo_factory("prune", {"Dockerfile": dockerfile(env.base_image)})
    image = env.registry.ref("cache/prune", "v1")
    base = fresh_storage(env.settings(), tmp_path / "p")
    settings = dataclasses.replace(
        base,
        layer_cache_max_age_seconds=0.0,
    )
    executor = env.executor(settings)
    outcome = await executor.run(
        build_with(spec(repo.git_url, image), "prune-1", {}), RecordingReporter()
    )
    assert isinstance(outcome, Succeeded)
    listed = await asyncio.to_thread(
        subprocess.run,
        ["buildah", "--storage-driver", "vfs", "--root", str(tmp_path / "p" / "storage"),
         "--runroot", str(tmp_path / "p" / "run"), "images", "--all", "--quiet"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert listed.stdout.strip() == ""


class LocalExecutorFor:
    """An executor on its own (initially empty) buildah storage."""

    def __init__(self, env: ExecutorEnv, where: Path) -> None:
        self.executor = env.executor(fresh_storage(env.settings(), where))

    async def run(self, build: Build) -> object:
        return await self.executor.run(build, RecordingReporter())


async def test_cache_is_pushed_with_the_push_credentials_not_the_pull_secret(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, registry_factory: RegistryFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    """buildah build has one --authfile for its pulls and its --cache-to push: with a pull
    secret it used to hold only the pull credentials, so a cache repository that needs the
    push credentials failed every time (and the build quietly ran again without cache)."""
    private = registry_factory(htpasswd={"pusher": "push-pa55"})

    def auth(host: str, user: str, password: str) -> str:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return json.dumps({"auths": {host: {"auth": token}}})

    settings = fresh_storage(
        env.settings(
            registries={private.host: RegistrySettings(insecure=True)},
            secrets={
                "push": SecretSettings(
                    data={".dockerconfigjson": auth(private.host, "pusher", "push-pa55")}
                ),
                "pull": SecretSettings(
                    data={".dockerconfigjson": auth(env.registry.host, "reader", "x")}
                ),
            },
        ),
        tmp_path / "auth",
    )
    repo = git_repo_factory("cache-auth", {"Dockerfile": dockerfile(env.base_image)})
    build_spec = spec(repo.git_url, private.ref("private/app", "v1"))
    build_spec["strategy"]["dockerStrategy"]["pullSecret"] = {"name": "pull"}
    build_spec["output"]["pushSecret"] = {"name": "push"}
    cache = f"{private.host}/cache/app"
    outcome = await env.executor(settings).run(
        build_with(build_spec, "auth-1", {"triggerd.dev/cache-repository": cache}),
        RecordingReporter(),
    )
    log = env.logs.read("team", "auth-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert f"--cache-to {cache}" in log
    assert "push credentials for " + cache in log
    assert "building again without it" not in log, log
    assert private.tags("cache/app")  # the cache layers are in the private registry
    assert "push-pa55" not in log


async def test_layer_cache_registry_setting_names_the_cache_repository(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    """The layerCacheRegistry setting names the cache repository without any annotation."""
    repo = git_repo_factory("cache-setting", {"Dockerfile": dockerfile(env.base_image)})
    settings = dataclasses.replace(
        fresh_storage(env.settings(), tmp_path / "s"), layer_cache_registry=env.registry.host
    )
    build = builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": "setting-1", "namespace": "team",
                         "labels": {"openshift.io/build-config.name": "setting"}},
            "spec": spec(repo.git_url, env.registry.ref("cache/setting-app", "v1")),
        }
    )  # fmt: skip
    outcome = await env.executor(settings).run(build, RecordingReporter())
    log = env.logs.read("team", "setting-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert f"--cache-to {env.registry.host}/team/setting" in log
    assert env.registry.tags("team/setting")
