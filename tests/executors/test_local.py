"""LocalExecutor end to end: real git repositories, real buildah, a real registry.

Each test runs whole builds through :class:`triggerd.executors.local.LocalExecutor` and
checks what the orchestrator would see (the Outcome and the Reporter's calls) and what a
user would see (the build log, the pushed image). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import subprocess
import time

import pytest

from tests.executors.conftest import (
    ExecutorEnv,
    RecordingReporter,
    git_spec,
    make_build,
    processes,
)
from tests.support.gitrepo import AUTHOR_EMAIL, AUTHOR_NAME, GitRepoFactory, Symlink
from tests.support.ports import free_port
from tests.support.registry import RegistryFactory
from triggerd.executors.base import Cancelled, Failed, Succeeded
from triggerd.executors.local import LAYER_USES_DIR, PID_FILE, LocalExecutor, _record_group
from triggerd.model.builds import Reason, StageName
from triggerd.settings import RegistrySettings, SecretSettings

pytestmark = pytest.mark.e2e

SLOW_STEP_SECONDS = 3


def image_config(env: ExecutorEnv, repo: str, tag: str) -> dict[str, object]:
    manifest = env.registry.manifest(repo, tag)
    assert manifest is not None
    config_digest = manifest.json()["config"]["digest"]
    blob = env.registry.request("GET", f"/v2/{repo}/blobs/{config_digest}")
    assert blob.status == 200
    config = json.loads(blob.body)["config"]
    assert isinstance(config, dict)
    return config


async def test_build_push_and_warm_rebuild(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = git_repo_factory(
        "hello",
        {
            "Dockerfile": f"FROM {env.base_image}\n"
            "COPY greeting /greeting\n"
            f"RUN sleep {SLOW_STEP_SECONDS} && cat /greeting > /built\n",
            "greeting": "hello from git\n",
        },
        message="Add the greeting",
    )
    commit = repo.rev_parse("main")
    image = env.registry.ref("executor/hello", "v1")
    executor = env.executor()
    spec = git_spec(repo.git_url, output=image)

    reporter = RecordingReporter()
    started = time.monotonic()
    outcome = await executor.run(make_build(spec, "hello-1"), reporter)
    cold = time.monotonic() - started
    log = env.logs.read("team", "hello-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert outcome.image_reference == image
    assert outcome.digest == env.registry.head_digest("executor/hello", "v1")

    # What the orchestrator was told, in order.
    assert reporter.events == [
        "running",
        "revision",
        "stage:FetchInputs",
        "stage:Build",
        "stage:PushImage",
    ]
    revision = reporter.revisions[0]
    assert revision.commit == commit
    assert revision.message == "Add the greeting"
    assert revision.author is not None
    assert (revision.author.name, revision.author.email) == (AUTHOR_NAME, AUTHOR_EMAIL)
    assert [s.name for s in reporter.stages] == [
        StageName.FETCH_INPUTS,
        StageName.BUILD,
        StageName.PUSH_IMAGE,
    ]
    assert all(s.duration_ms >= 0 for s in reporter.stages)

    # What the user sees.
    assert f"--> FetchInputs: git -C source fetch --depth=1 --no-tags -- {repo.git_url} main" in log
    # The Dockerfile's three steps and the labels; OpenShift's build ENV is set in the
    # image config without a step of its own (buildah --env).
    assert f"STEP 1/4: FROM {env.base_image}" in log
    assert "STEP 3/4: RUN sleep" in log
    assert "--env OPENSHIFT_BUILD_NAME=hello-1" in log
    environment = image_config(env, "executor/hello", "v1")["Env"]
    assert isinstance(environment, list) and "OPENSHIFT_BUILD_NAME=hello-1" in environment
    assert f"--> Pushed {image}@{outcome.digest}" in log
    labels = image_config(env, "executor/hello", "v1")["Labels"]
    assert isinstance(labels, dict)
    assert labels["io.openshift.build.commit.id"] == commit
    assert labels["org.opencontainers.image.revision"] == commit
    assert labels["io.openshift.build.name"] == "hello-1"
    assert labels["io.openshift.build.commit.ref"] == "main"
    # The workspace is gone, the log stays.
    assert not (env.tmp / "work" / "team" / "hello-1").exists()
    assert env.logs.exists("team", "hello-1")

    # Same commit again: every filesystem step comes from the layer cache.
    started = time.monotonic()
    again = await executor.run(make_build(spec, "hello-2"), RecordingReporter())
    warm = time.monotonic() - started
    log2 = env.logs.read("team", "hello-2").decode()
    assert isinstance(again, Succeeded), log2
    assert log2.count("--> Using cache") == 2, log2
    assert warm < cold - SLOW_STEP_SECONDS * 0.8, (cold, warm)
    # Its own build metadata, not the cached image's (the label step is never a cache hit).
    environment = image_config(env, "executor/hello", "v1")["Env"]
    assert isinstance(environment, list) and "OPENSHIFT_BUILD_NAME=hello-2" in environment
    with capsys.disabled():
        print(f"\n[timings] cold build+push {cold:.2f}s, warm rebuild+push {warm:.2f}s")


async def test_from_override_env_and_build_args_without_output(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    # The last FROM names an image that does not exist: only the override makes it build.
    repo = git_repo_factory(
        "multistage",
        {
            "app/Containerfile": f"FROM {env.base_image} AS builder\n"
            "RUN echo compiled > /artifact\n"
            "FROM 127.0.0.1:1/does/not:exist\n"
            "ARG FLAVOUR\n"
            "COPY --from=builder /artifact /artifact\n"
            'RUN test "$GREETING" = \'hi $USER "there"\' && test "$FLAVOUR" = spicy '
            "&& echo env-and-args-ok\n",
        },
    )
    spec = git_spec(
        repo.file_url,
        source={
            "type": "Git",
            "git": {"uri": repo.file_url, "ref": "main"},
            "contextDir": "app",
        },
        strategy={
            "type": "Docker",
            "dockerStrategy": {
                "dockerfilePath": "Containerfile",
                "from": {"kind": "DockerImage", "name": env.base_image},
                "env": [{"name": "GREETING", "value": 'hi $USER "there"'}],
                "buildArgs": [{"name": "FLAVOUR", "value": "spicy"}],
            },
        },
    )
    reporter = RecordingReporter()
    outcome = await env.executor().run(make_build(spec, "multi-1"), reporter)
    log = env.logs.read("team", "multi-1").decode()
    assert outcome == Succeeded(digest="", image_reference=""), log
    assert "env-and-args-ok" in log
    assert "--> PullImages: buildah" in log
    assert [s.name for s in reporter.stages] == [
        StageName.FETCH_INPUTS,
        StageName.PULL_IMAGES,
        StageName.BUILD,
    ]


async def test_inline_dockerfile_without_git(env: ExecutorEnv) -> None:
    spec = {
        "source": {
            "type": "Dockerfile",
            "dockerfile": f"FROM {env.base_image}\nRUN echo inline-ok\n",
        },
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    reporter = RecordingReporter()
    outcome = await env.executor().run(make_build(spec, "inline-1"), reporter)
    log = env.logs.read("team", "inline-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert "inline-ok" in log
    assert reporter.revisions == []


async def test_layer_cache_bookkeeping_failure_keeps_the_outcome(env: ExecutorEnv) -> None:
    """The last-use records cannot be written (their directory is a file): the build that
    built its image still succeeds, and the failure is only logged."""
    settings = dataclasses.replace(env.settings(), layer_cache_max_age_seconds=3600.0)
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / LAYER_USES_DIR).write_text("not a directory")
    spec = {
        "source": {"type": "Dockerfile", "dockerfile": f"FROM {env.base_image}\nRUN echo kept\n"},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    outcome = await env.executor(settings).run(make_build(spec, "kept-1"), RecordingReporter())
    assert isinstance(outcome, Succeeded), env.logs.read("team", "kept-1").decode()


async def test_failing_run_step(env: ExecutorEnv, git_repo_factory: GitRepoFactory) -> None:
    repo = git_repo_factory(
        "broken",
        {"Dockerfile": f"FROM {env.base_image}\nRUN echo about-to-fail && false\n"},
    )
    outcome = await env.executor().run(
        make_build(git_spec(repo.git_url, output=env.registry.ref("executor/broken")), "broken-1"),
        RecordingReporter(),
    )
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.DOCKER_BUILD_FAILED
    assert outcome.message.startswith(Reason.DOCKER_BUILD_FAILED.message)
    assert "buildah build exited with status" in outcome.message
    assert "about-to-fail" in outcome.log_snippet
    assert 'Error: building at STEP "RUN echo about-to-fail && false"' in outcome.log_snippet
    assert len(outcome.log_snippet.splitlines()) <= 10
    assert env.registry.tags("executor/broken") == []


async def test_unreachable_git_server(env: ExecutorEnv) -> None:
    uri = f"git://127.0.0.1:{free_port()}/nothing.git"
    reporter = RecordingReporter()
    outcome = await env.executor().run(make_build(git_spec(uri), "nogit-1"), reporter)
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.FETCH_SOURCE_FAILED
    assert "git fetch exited with status 128" in outcome.message
    assert "Connection refused" in outcome.log_snippet or "unable to connect" in outcome.log_snippet
    assert reporter.events == ["running", "stage:FetchInputs"]


async def test_push_needs_the_right_credentials(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, registry_factory: RegistryFactory
) -> None:
    private = registry_factory(htpasswd={"pusher": "correct-horse"})
    repo = git_repo_factory("private", {"Dockerfile": f"FROM {env.base_image}\nRUN true\n"})

    def docker_config(password: str) -> str:
        token = base64.b64encode(f"pusher:{password}".encode()).decode()
        return json.dumps({"auths": {private.host: {"auth": token}}})

    right_file = env.tmp / "right-auth.json"
    right_file.write_text(docker_config("correct-horse"))
    settings = env.settings(
        registries={private.host: RegistrySettings(insecure=True)},
        secrets={
            "wrong": SecretSettings(data={".dockerconfigjson": docker_config("battery-staple")}),
            "right": SecretSettings(path=str(right_file)),
        },
    )
    executor = env.executor(settings)
    image = private.ref("team/app", "v1")
    spec = git_spec(repo.git_url, output=image)

    spec["output"]["pushSecret"] = {"name": "wrong"}
    outcome = await executor.run(make_build(spec, "push-1"), RecordingReporter())
    log = env.logs.read("team", "push-1").decode()
    assert isinstance(outcome, Failed), log
    assert outcome.reason is Reason.PUSH_IMAGE_TO_REGISTRY_FAILED
    assert "authentication required" in outcome.log_snippet or "unauthorized" in log.lower()
    assert "--authfile secrets/push-auth.json" in log
    # Neither the password nor the encoded credentials reach the log.
    assert "battery-staple" not in log
    assert base64.b64encode(b"pusher:battery-staple").decode() not in log

    spec["output"]["pushSecret"] = {"name": "right"}
    outcome = await executor.run(make_build(spec, "push-2"), RecordingReporter())
    log = env.logs.read("team", "push-2").decode()
    assert isinstance(outcome, Succeeded), log
    assert outcome.digest == private.head_digest("team/app", "v1")

    spec["output"]["pushSecret"] = {"name": "missing"}
    outcome = await executor.run(make_build(spec, "push-3"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.PUSH_IMAGE_TO_REGISTRY_FAILED
    assert 'push secret "missing" is not defined' in outcome.message


def _group_of(marker: str) -> int | None:
    for _pid, (pgrp, cmdline) in processes().items():
        if cmdline == marker:
            return pgrp
    return None


async def _wait_for_group(marker: str, task: asyncio.Task[object]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert not task.done(), task.result()
        pgrp = _group_of(marker)
        if pgrp is not None:
            return pgrp
        await asyncio.sleep(0.05)
    raise AssertionError(f"{marker!r} never started")


def _group_members(pgrp: int) -> list[str]:
    return [cmd for pid, (g, cmd) in processes().items() if g == pgrp]


def _containers(env: ExecutorEnv) -> list[str]:
    out = subprocess.run(
        ["buildah", *env.storage.flags(), "containers", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


async def test_cancel_kills_the_whole_build(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory("sleepy", {"Dockerfile": f"FROM {env.base_image}\nRUN sleep 61\n"})
    executor = env.executor()
    task = asyncio.create_task(
        executor.run(make_build(git_spec(repo.git_url), "sleepy-1"), RecordingReporter())
    )
    pgrp = await _wait_for_group("sleep 61", task)
    members = _group_members(pgrp)
    assert any(cmd.startswith("buildah ") for cmd in members), members

    started = time.monotonic()
    assert await executor.cancel("team", "sleepy-1") is True
    outcome = await asyncio.wait_for(task, 10)
    took = time.monotonic() - started
    assert outcome == Cancelled()
    assert took < 5, took
    assert _group_members(pgrp) == []
    assert _group_of("sleep 61") is None
    assert "--> Build cancelled" in env.logs.read("team", "sleepy-1").decode()
    # The killed build's working container was swept from the storage.
    assert _containers(env) == []
    assert await executor.cancel("team", "sleepy-1") is False


async def test_deadline_stops_the_build(env: ExecutorEnv, git_repo_factory: GitRepoFactory) -> None:
    repo = git_repo_factory("slow", {"Dockerfile": f"FROM {env.base_image}\nRUN sleep 62\n"})
    spec = git_spec(repo.git_url, completionDeadlineSeconds=3)
    started = time.monotonic()
    outcome = await env.executor().run(make_build(spec, "slow-1"), RecordingReporter())
    took = time.monotonic() - started
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.EXCEEDED_RETRY_TIMEOUT
    assert "completionDeadlineSeconds=3" in outcome.message
    assert "--> Deadline of 3s exceeded" in outcome.log_snippet
    assert 3 <= took < 8, took
    assert _group_of("sleep 62") is None


async def test_cancelling_the_task_also_kills_the_processes(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    # What happens when the server shuts down: the orchestrator cancels the run's task.
    repo = git_repo_factory("shutdown", {"Dockerfile": f"FROM {env.base_image}\nRUN sleep 63\n"})
    task = asyncio.create_task(
        env.executor().run(make_build(git_spec(repo.git_url), "shutdown-1"), RecordingReporter())
    )
    pgrp = await _wait_for_group("sleep 63", task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _group_members(pgrp) == []


async def test_repository_cannot_point_the_build_outside_its_checkout(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory("escape", {"Dockerfile": Symlink("/etc/passwd"), "ctx": Symlink("/")})
    executor = env.executor()
    outcome = await executor.run(
        make_build(git_spec(repo.git_url), "escape-1"), RecordingReporter()
    )
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.DOCKER_BUILD_FAILED
    assert "Dockerfile points outside the source" in outcome.message

    spec = git_spec(repo.git_url)
    spec["source"]["contextDir"] = "ctx"
    outcome = await executor.run(make_build(spec, "escape-2"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert "ctx points outside the source" in outcome.message
    assert "root:" not in env.logs.read("team", "escape-1").decode()


async def test_recover_reports_server_restarted_and_kills_leftovers(env: ExecutorEnv) -> None:
    executor: LocalExecutor = env.executor()
    build = make_build(git_spec("https://git.example.com/x.git"), "orphan-1")
    with env.logs.open_writer("team", "orphan-1") as writer:
        writer.line("--> Build: buildah build ...")
        writer.line("STEP 2/3: RUN make")
    # A process group left by a server that was killed mid-build.
    workspace = executor.workspace("team", "orphan-1")
    workspace.mkdir(parents=True)
    leftover = await asyncio.create_subprocess_exec("sleep", "64", start_new_session=True)
    try:
        _record_group(workspace, leftover.pid)
        assert (workspace / PID_FILE).exists()
        outcome = await executor.recover(build)
        assert await asyncio.wait_for(leftover.wait(), 5) == -signal.SIGKILL
    finally:
        if leftover.returncode is None:
            os.killpg(leftover.pid, signal.SIGKILL)
            await leftover.wait()
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.SERVER_RESTARTED
    assert outcome.message == Reason.SERVER_RESTARTED.message
    assert "STEP 2/3: RUN make" in outcome.log_snippet
    assert not workspace.exists()


async def test_cancel_of_an_unknown_build(env: ExecutorEnv) -> None:
    assert await env.executor().cancel("team", "never-started") is False


async def test_source_secret_that_is_neither_ssh_nor_basic_auth(env: ExecutorEnv) -> None:
    settings = env.settings(secrets={"other": SecretSettings(data={"token": "t"})})
    spec = git_spec("https://git.example.com/x.git")
    spec["source"]["sourceSecret"] = {"name": "other"}
    outcome = await env.executor(settings).run(make_build(spec, "secret-1"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.FETCH_SOURCE_FAILED
    assert "needs a path, data.ssh-privatekey, or data.username" in outcome.message
    assert "--> Build failed (FetchSourceFailed)" in env.logs.read("team", "secret-1").decode()


def test_workspace_names_are_checked(env: ExecutorEnv) -> None:
    with pytest.raises(ValueError):
        env.executor().workspace("team", "../etc")
