"""source.sourceSecret end to end: basic auth against a git smart-HTTP server that demands a
password, and an ssh key against a real sshd; the build fetches with it, and the credential
appears nowhere it should not (log, image, checkout)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from tests.strategies.githttp import GitHttpServer
from tests.strategies.images import layer_files
from tests.strategies.sshgit import SshServer
from tests.support.gitrepo import GitRepoFactory
from triggerd.executors.base import Failed, Succeeded
from triggerd.model.builds import Reason
from triggerd.settings import SecretSettings

pytestmark = pytest.mark.e2e

PASSWORD = "pa55word-never-logged"


@pytest.fixture
async def git_http(git_repo_factory: GitRepoFactory) -> AsyncIterator[tuple[GitHttpServer, str]]:
    repo = git_repo_factory(
        "private-app",
        {"Dockerfile": "ARG BASE\nFROM $BASE\nCOPY . /src\nRUN cat /src/secret-free.txt\n",
         "secret-free.txt": "fetched over authenticated http\n"},
    )  # fmt: skip
    server = GitHttpServer(repo.path.parent, "builder", PASSWORD)
    await server.start()
    yield server, repo.path.name
    await server.stop()


def spec(url: str, base: str, output: str, secret: str | None) -> dict[str, Any]:
    source: dict[str, Any] = {"type": "Git", "git": {"uri": url, "ref": "main"}}
    if secret:
        source["sourceSecret"] = {"name": secret}
    return {
        "source": source,
        "strategy": {
            "type": "Docker",
            "dockerStrategy": {"buildArgs": [{"name": "BASE", "value": base}]},
        },
        "output": {"to": {"kind": "DockerImage", "name": output}},
    }


async def test_basic_auth_source_secret(
    env: ExecutorEnv, git_http: tuple[GitHttpServer, str]
) -> None:
    server, repo = git_http
    image = env.registry.ref("inputs/private", "v1")
    settings = env.settings(
        secrets={"git-basic": SecretSettings(data={"username": "builder", "password": PASSWORD})}
    )
    outcome = await env.executor(settings).run(
        make_build(spec(server.url(repo), env.base_image, image, "git-basic"), "private-1"),
        RecordingReporter(),
    )
    log = env.logs.read("team", "private-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert "fetched over authenticated http" in log
    assert PASSWORD not in log
    for name, content in layer_files(env.registry, "inputs/private", "v1").items():
        assert PASSWORD.encode() not in content, name


async def test_without_the_secret_the_fetch_is_refused(
    env: ExecutorEnv, git_http: tuple[GitHttpServer, str]
) -> None:
    server, repo = git_http
    image = env.registry.ref("inputs/private-denied", "v1")
    outcome = await env.executor().run(
        make_build(spec(server.url(repo), env.base_image, image, None), "denied-1"),
        RecordingReporter(),
    )
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.FETCH_SOURCE_FAILED
    assert server.denied >= 1


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[SshServer]:
    server = SshServer(tmp_path / "sshd")
    server.start()
    yield server
    server.stop()


async def test_ssh_key_source_secret(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, ssh_server: SshServer
) -> None:
    """An ssh-auth source secret (ssh-privatekey) end to end: git fetches over ssh:// from
    a real sshd that only knows the key; the key is nowhere in the log or the image."""
    repo = git_repo_factory(
        "ssh-app",
        {"Dockerfile": "ARG BASE\nFROM $BASE\nCOPY . /src\nRUN cat /src/over-ssh.txt\n",
         "over-ssh.txt": "fetched over ssh\n"},
    )  # fmt: skip
    key = ssh_server.client_key.read_text()
    image = env.registry.ref("inputs/ssh", "v1")
    settings = env.settings(secrets={"git-ssh": SecretSettings(data={"ssh-privatekey": key})})
    url = ssh_server.url(repo.path)
    outcome = await env.executor(settings).run(
        make_build(spec(url, env.base_image, image, "git-ssh"), "ssh-1"), RecordingReporter()
    )
    log = env.logs.read("team", "ssh-1").decode()
    assert isinstance(outcome, Succeeded), log + ssh_server.process.log_text()
    assert "fetched over ssh" in log
    body = "".join(key.strip().splitlines()[1:-1])  # the base64 of the key itself
    assert body[:40] not in log
    for name, content in layer_files(env.registry, "inputs/ssh", "v1").items():
        assert body[:40].encode() not in content, name
        assert b"OPENSSH PRIVATE KEY" not in content, name
    # Without the key sshd lets nobody in.
    refused = await env.executor().run(
        make_build(spec(url, env.base_image, image, None), "ssh-2"), RecordingReporter()
    )
    assert isinstance(refused, Failed)
    assert refused.reason is Reason.FETCH_SOURCE_FAILED
