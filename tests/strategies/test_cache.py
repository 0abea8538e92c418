"""Layer caches end to end: the registry cache (--cache-to/--cache-from) lets a build on
empty local storage reuse layers, pushed with the push credentials, named by annotation or
the layerCacheRegistry setting; a failed cache push retries the build without the cache;
the host cache is pruned by last use (age) and by size, also while a build runs."""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter
from tests.support.buildah import BuildahEnv
from tests.support.gitrepo import GitRepoFactory
from tests.support.ports import free_port
from tests.support.processes import async_wait_for
from tests.support.registry import Registry, RegistryFactory
from triggerd.executors import layer_cache
from triggerd.executors.base import Succeeded
from triggerd.executors.local import LocalExecutor
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


class Clock:
    """The executor's clock, moved by the test (hours pass without waiting)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def local_images(where: Path) -> dict[str, str]:
    """name → image id in the buildah storage under ``where``."""
    listed = subprocess.run(
        ["buildah", "--storage-driver", "vfs", "--root", str(where / "storage"),
         "--runroot", str(where / "run"), "images", "--json", "--no-trunc"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {
        name: image["id"].removeprefix("sha256:")
        for image in json.loads(listed or "[]")
        for name in image["names"] or []
    }


@pytest.fixture(scope="module")
def old_base(
    buildah_env: BuildahEnv,
    registry: Registry,
    base_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The busybox base rebuilt with a 1970 creation date, as long-published upstream images
    carry old dates."""
    where = tmp_path_factory.mktemp("old-base")
    (where / "Containerfile").write_text(f"FROM {base_image}\nRUN true\n")
    local = "localhost/triggerd-tests/old-busybox:latest"
    buildah_env.run("build", "--isolation", "chroot", "--timestamp", "0", "--tls-verify=false",
                    "-f", str(where / "Containerfile"), "-t", local, str(where))  # fmt: skip
    ref = registry.ref("base/old-busybox", "latest")
    buildah_env.push(local, ref, creds=registry.auth)
    return ref


async def test_host_cache_is_pruned_by_last_use_not_by_image_date(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, old_base: str, tmp_path: Path
) -> None:
    where = tmp_path / "age"
    settings = dataclasses.replace(
        fresh_storage(env.settings(), where), layer_cache_max_age_seconds=3600.0
    )
    clock = Clock()
    executor = LocalExecutor(settings, env.logs, tmp_path / "work", clock=clock)
    repo1 = git_repo_factory("age-one", {"Dockerfile": f"FROM {old_base}\nRUN echo one > /one\n"})
    repo2 = git_repo_factory("age-two", {"Dockerfile": f"FROM {old_base}\nRUN echo two > /two\n"})
    one, two = env.registry.ref("cache/age-one", "v1"), env.registry.ref("cache/age-two", "v1")

    outcome = await executor.run(
        build_with(spec(repo1.git_url, one), "age-1", {}), RecordingReporter()
    )
    assert isinstance(outcome, Succeeded), env.logs.read("team", "age-1").decode()
    # Pulled just now and used: its 1970 date does not make the base image stale.
    assert {old_base, one} <= set(local_images(where))

    clock.now += 50 * 60
    outcome = await executor.run(
        build_with(spec(repo2.git_url, two), "age-2", {}), RecordingReporter()
    )
    assert isinstance(outcome, Succeeded), env.logs.read("team", "age-2").decode()
    clock.now += 40 * 60
    # 90 minutes after the first build, 40 after the second: only what the first build
    # alone used has not been used for an hour. The base image was used by both.
    first = local_images(where)[one]
    removed = await executor.prune_layer_cache()
    assert first in removed
    assert set(local_images(where)) == {old_base, two}
    clock.now += 2 * 3600
    await executor.prune_layer_cache()
    assert local_images(where) == {}


async def test_host_cache_is_pruned_by_size_least_recently_used_first(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    where = tmp_path / "size"
    # A long age: last uses are recorded, nothing is old enough to go.
    settings = dataclasses.replace(
        fresh_storage(env.settings(), where), layer_cache_max_age_seconds=10 * 365 * 86400.0
    )
    clock = Clock()
    executor = LocalExecutor(settings, env.logs, tmp_path / "work", clock=clock)
    base = env.base_image
    repo1 = git_repo_factory("size-one", {"Dockerfile": f"FROM {base}\nRUN echo one > /one\n"})
    repo2 = git_repo_factory("size-two", {"Dockerfile": f"FROM {base}\nRUN echo two > /two\n"})
    one, two = env.registry.ref("cache/size-one", "v1"), env.registry.ref("cache/size-two", "v1")
    for repo, output, name in ((repo1, one, "size-1"), (repo2, two, "size-2")):
        outcome = await executor.run(
            build_with(spec(repo.git_url, output), name, {}), RecordingReporter()
        )
        assert isinstance(outcome, Succeeded), env.logs.read("team", name).decode()
        clock.now += 60
    before = layer_cache.Usage(where / "storage", "vfs").total
    # One byte too many: the least recently used images go until the storage fits.
    executor.settings = dataclasses.replace(settings, layer_cache_max_bytes=before - 1)
    removed = await executor.prune_layer_cache()
    assert removed
    images = local_images(where)
    assert one not in images
    assert {base, two} <= set(images)
    assert layer_cache.Usage(where / "storage", "vfs").total <= before - 1


async def test_host_cache_is_pruned_while_a_build_runs(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, tmp_path: Path
) -> None:
    where = tmp_path / "busy"
    settings = dataclasses.replace(
        fresh_storage(env.settings(), where), layer_cache_max_age_seconds=10 * 365 * 86400.0
    )
    executor = LocalExecutor(settings, env.logs, tmp_path / "work")
    base = env.base_image
    repo1 = git_repo_factory("busy-one", {"Dockerfile": f"FROM {base}\nRUN echo one > /one\n"})
    repo2 = git_repo_factory(
        "busy-two", {"Dockerfile": f"FROM {base}\nRUN echo two > /two\nRUN sleep 3\n"}
    )
    one, two = env.registry.ref("cache/busy-one", "v1"), env.registry.ref("cache/busy-two", "v1")
    outcome = await executor.run(
        build_with(spec(repo1.git_url, one), "busy-1", {}), RecordingReporter()
    )
    assert isinstance(outcome, Succeeded)
    first = local_images(where)[one]
    running = asyncio.create_task(
        executor.run(build_with(spec(repo2.git_url, two), "busy-2", {}), RecordingReporter())
    )

    async def sleeping() -> bool:
        log = env.logs.read("team", "busy-2") if env.logs.exists("team", "busy-2") else b""
        return b"RUN sleep 3" in log

    await async_wait_for(sleeping, timeout=60, what="busy-2 at its last step")
    # Everything counts as stale now; a running build no longer holds pruning back, and
    # what it uses stays.
    executor.settings = dataclasses.replace(settings, layer_cache_max_age_seconds=0.0)
    removed = await executor.prune_layer_cache()
    assert first in removed
    outcome = await running
    assert isinstance(outcome, Succeeded), env.logs.read("team", "busy-2").decode()


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
