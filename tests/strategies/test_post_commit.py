"""postCommit end to end: the hook runs in a container of the image just built, before
the push; a failing hook fails the build with PostCommitHookFailed and nothing is pushed."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from tests.support.gitrepo import GitRepoFactory
from triggerd.executors.base import Failed, Succeeded
from triggerd.model.builds import Reason, StageName

pytestmark = pytest.mark.e2e


def docker_spec(uri: str, output: str, post_commit: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": {"type": "Git", "git": {"uri": uri, "ref": "main"}},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
        "output": {"to": {"kind": "DockerImage", "name": output}},
        "postCommit": post_commit,
    }


def dockerfile(base: str) -> str:
    return (
        f"FROM {base}\n"
        "RUN echo built-into-the-image > /marker\n"
        'ENTRYPOINT ["/bin/sh", "-c", "echo entrypoint saw $0 $1; test \\"$1\\" = ok"]\n'
    )


@pytest.mark.parametrize(
    ("hook", "expected_line"),
    [
        ({"script": 'echo "hook sees $(cat /marker) $1"', "args": ["arg1"]},
         "hook sees built-into-the-image arg1"),
        ({"command": ["/bin/sh", "-c"], "args": ["echo command form $(cat /marker)"]},
         "command form built-into-the-image"),
        ({"args": ["first", "ok"]}, "entrypoint saw first ok"),
    ],
    ids=["script", "command", "args-to-entrypoint"],
)  # fmt: skip
async def test_passing_hook_runs_in_the_built_image_before_the_push(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, hook: dict[str, Any], expected_line: str
) -> None:
    repo = git_repo_factory("hook-pass", {"Dockerfile": dockerfile(env.base_image)})
    image = env.registry.ref("strategies/hook-pass", "v1")
    reporter = RecordingReporter()
    outcome = await env.executor().run(
        make_build(docker_spec(repo.git_url, image, hook), "hook-pass-1"), reporter
    )
    log = env.logs.read("team", "hook-pass-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert expected_line in log
    stages = [s.name for s in reporter.stages]
    assert stages.index(StageName.POST_COMMIT) == stages.index(StageName.PUSH_IMAGE) - 1
    assert env.registry.head_digest("strategies/hook-pass", "v1") == outcome.digest


async def test_failing_hook_fails_the_build_and_pushes_nothing(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory("hook-fail", {"Dockerfile": dockerfile(env.base_image)})
    image = env.registry.ref("strategies/hook-fail", "v1")
    hook = {"script": "echo running tests; test -f /no-such-file"}
    outcome = await env.executor().run(
        make_build(docker_spec(repo.git_url, image, hook), "hook-fail-1"), RecordingReporter()
    )
    log = env.logs.read("team", "hook-fail-1").decode()
    assert isinstance(outcome, Failed), log
    assert outcome.reason is Reason.POST_COMMIT_HOOK_FAILED
    assert "running tests" in log
    assert "exited with status 1" in outcome.message
    assert env.registry.head_digest("strategies/hook-fail", "v1") is None
    # The hook's container is removed whatever the result.
    listed = await asyncio.to_thread(
        subprocess.run,
        ["buildah", *env.storage.flags(), "containers", "--quiet"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert listed.stdout.strip() == ""
