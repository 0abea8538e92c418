"""Build inputs end to end: source.secrets and source.configMaps placed for the build;
a secret never ends up in the pushed image's layers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import subprocess
from typing import Any

import pytest

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from tests.strategies.images import layer_files, run_in
from tests.support.buildah import BuildahEnv
from tests.support.gitrepo import Executable, GitRepoFactory
from tests.support.registry import RegistryFactory
from triggerd.executors.base import Failed, Succeeded
from triggerd.model.builds import Reason
from triggerd.settings import RegistrySettings, SecretSettings

pytestmark = pytest.mark.e2e

SECRET = "top-secret-value-4242"


def secrets() -> dict[str, SecretSettings]:
    return {"creds": SecretSettings(data={"token": SECRET})}


def assert_secret_absent(env: ExecutorEnv, repo: str, tag: str) -> None:
    files = layer_files(env.registry, repo, tag)
    assert files, "the image has layers"
    for name, content in files.items():
        assert SECRET.encode() not in content, name
        assert not name.endswith("/token"), name


async def test_s2i_secret_and_config_map_in_the_working_directory(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, builder_image: str,
    buildah_env: BuildahEnv,
) -> None:  # fmt: skip
    """OpenShift's default destinationDir ("") with an assemble that copies /tmp/src
    wholesale, as real builders do: the secret sits in the builder's working directory
    (s2i's /opt/app-root/src for a builder without WORKDIR) while assemble runs, and is in
    no layer of the image; the config map stays there."""
    repo = git_repo_factory(
        "s2i-secret",
        {
            "message": "m\n",
            ".s2i/bin/assemble": Executable(
                "#!/bin/sh\nset -e\n"
                # The digest, not the value: the script itself is in the image.
                "sha256sum /opt/app-root/src/token | grep -q "
                f"{hashlib.sha256(SECRET.encode()).hexdigest()}\n"
                'test "$(cat /opt/app-root/src/conf/level)" = debug\n'
                "cp -r /tmp/src/. /opt/app/\n"
                "echo 'assemble read the secret' > /opt/app/used-secret\n"
            ),
        },
    )
    image = env.registry.ref("inputs/s2i-secret", "v1")
    spec: dict[str, Any] = {
        "source": {
            "type": "Git",
            "git": {"uri": repo.git_url, "ref": "main"},
            "secrets": [{"secret": {"name": "creds"}}],
            "configMaps": [{"configMap": {"name": "app-config"}, "destinationDir": "conf"}],
        },
        "strategy": {
            "type": "Source",
            "sourceStrategy": {"from": {"kind": "DockerImage", "name": builder_image}},
        },
        "output": {"to": {"kind": "DockerImage", "name": image}},
    }
    settings = dataclasses.replace(
        env.settings(secrets=secrets()), config_maps={"app-config": {"level": "debug"}}
    )
    outcome = await env.executor(settings).run(
        make_build(spec, "s2i-secret-1"), RecordingReporter()
    )
    log = env.logs.read("team", "s2i-secret-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert SECRET not in log
    assert 'secret "creds": 1 files in /opt/app-root/src, removed after assemble' in log
    assert run_in(buildah_env, image, "cat", "/opt/app/used-secret") == "assemble read the secret\n"
    listing = run_in(buildah_env, image, "ls", "-A", "/opt/app-root/src", "/opt/app")
    assert "token" not in listing.split()
    assert "message" in listing.split()  # assemble copied the source (not hidden by a mount)
    assert run_in(buildah_env, image, "cat", "/opt/app-root/src/conf/level") == "debug"
    assert_secret_absent(env, "inputs/s2i-secret", "v1")


async def test_docker_secret_and_config_map_are_in_the_context(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, buildah_env: BuildahEnv
) -> None:
    base = env.base_image
    repo = git_repo_factory(
        "docker-inputs",
        {
            # The documented pattern: use the secret in a stage that is not shipped.
            "Dockerfile": f"FROM {base} AS use\n"
            "COPY build-secrets/token /token\n"
            f'RUN test "$(wc -c < /token)" -eq {len(SECRET)} && echo ok > /checked\n'
            f"FROM {base}\n"
            "COPY --from=use /checked /checked\n"
            "COPY settings/ /settings/\n",
        },
    )
    image = env.registry.ref("inputs/docker", "v1")
    spec: dict[str, Any] = {
        "source": {
            "type": "Git",
            "git": {"uri": repo.git_url, "ref": "main"},
            "secrets": [{"secret": {"name": "creds"}, "destinationDir": "build-secrets"}],
            "configMaps": [{"configMap": {"name": "app-config"}, "destinationDir": "settings"}],
        },
        "strategy": {"type": "Docker", "dockerStrategy": {}},
        "output": {"to": {"kind": "DockerImage", "name": image}},
    }
    base_settings = env.settings(secrets=secrets())
    settings = dataclasses.replace(
        base_settings,
        config_maps={"app-config": {"level": "debug"}},
    )
    outcome = await env.executor(settings).run(make_build(spec, "docker-in-1"), RecordingReporter())
    log = env.logs.read("team", "docker-in-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert run_in(buildah_env, image, "cat", "/settings/level") == "debug"
    assert run_in(buildah_env, image, "cat", "/checked") == "ok\n"
    assert_secret_absent(env, "inputs/docker", "v1")


async def test_undefined_secret_fails_before_anything_runs(env: ExecutorEnv) -> None:
    spec: dict[str, Any] = {
        "source": {
            "type": "Dockerfile",
            "dockerfile": f"FROM {env.base_image}\n",
            "secrets": [{"secret": {"name": "missing"}}],
        },
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    outcome = await env.executor().run(make_build(spec, "missing-1"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert 'secret "missing" is not defined' in outcome.message
    assert outcome.reason is Reason.GENERIC_BUILD_FAILED


async def test_source_images_copy_paths_out_of_another_image(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, builder_image: str,
    buildah_env: BuildahEnv,
) -> None:  # fmt: skip
    repo = git_repo_factory(
        "image-inputs",
        {"Dockerfile": f"FROM {env.base_image}\nCOPY . /ctx/\n"},
    )
    image = env.registry.ref("inputs/images", "v1")
    spec: dict[str, Any] = {
        "source": {
            "type": "Git",
            "git": {"uri": repo.git_url, "ref": "main"},
            "images": [
                {
                    "from": {"kind": "DockerImage", "name": builder_image},
                    "paths": [
                        {"sourcePath": "/usr/libexec/s2i", "destinationDir": "whole"},
                        {"sourcePath": "/usr/libexec/s2i/.", "destinationDir": "contents"},
                        {"sourcePath": "/usr/libexec/s2i/run", "destinationDir": ""},
                    ],
                }
            ],
        },
        "strategy": {"type": "Docker", "dockerStrategy": {}},
        "output": {"to": {"kind": "DockerImage", "name": image}},
    }
    outcome = await env.executor().run(make_build(spec, "images-1"), RecordingReporter())
    log = env.logs.read("team", "images-1").decode()
    assert isinstance(outcome, Succeeded), log
    listing = run_in(buildah_env, image, "sh", "-c", "cd /ctx && ls whole/s2i contents run")
    assert listing.split() == [
        "run",
        "contents:", "assemble", "run", "save-artifacts",
        "whole/s2i:", "assemble", "run", "save-artifacts",
    ]  # fmt: skip
    assert run_in(buildah_env, image, "cat", "/ctx/contents/run").startswith("#!/bin/sh")
    # The working container used for copying is gone from the executor's storage.
    listed = await asyncio.to_thread(
        subprocess.run,
        ["buildah", *env.storage.flags(), "containers", "--quiet"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert listed.stdout.strip() == ""


async def test_missing_image_path_fails_the_fetch(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory("image-missing", {"Dockerfile": f"FROM {env.base_image}\n"})
    spec: dict[str, Any] = {
        "source": {
            "type": "Git",
            "git": {"uri": repo.git_url, "ref": "main"},
            "images": [
                {
                    "from": {"kind": "DockerImage", "name": env.base_image},
                    "paths": [{"sourcePath": "/no/such/path", "destinationDir": "x"}],
                }
            ],
        },
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    outcome = await env.executor().run(make_build(spec, "img-missing-1"), RecordingReporter())
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.FETCH_SOURCE_FAILED
    assert "/no/such/path: no such file or directory in the image" in outcome.message


async def test_source_images_pull_from_a_private_registry_with_their_pull_secret(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, registry_factory: RegistryFactory,
    buildah_env: BuildahEnv,
) -> None:  # fmt: skip
    private = registry_factory(htpasswd={"puller": "correct-horse"})
    tools = private.ref("private/tools", "v1")
    # The busybox base, copied into the registry that needs credentials.
    await asyncio.to_thread(
        subprocess.run,
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
         "--dest-creds", "puller:correct-horse",
         f"docker://{env.base_image}", f"docker://{tools}"],
        check=True, capture_output=True,
    )  # fmt: skip
    token = base64.b64encode(b"puller:correct-horse").decode()
    settings = env.settings(
        registries={private.host: RegistrySettings(insecure=True)},
        secrets={
            "private-pull": SecretSettings(
                data={".dockerconfigjson": json.dumps({"auths": {private.host: {"auth": token}}})}
            )
        },
    )
    repo = git_repo_factory(
        "private-image-inputs", {"Dockerfile": f"FROM {env.base_image}\nCOPY tools /tools/\n"}
    )
    image = env.registry.ref("inputs/private-images", "v1")

    def spec(pull_secret: str | None) -> dict[str, Any]:
        image_source: dict[str, Any] = {
            "from": {"kind": "DockerImage", "name": tools},
            "paths": [{"sourcePath": "/bin/busybox", "destinationDir": "tools"}],
        }
        if pull_secret:
            image_source["pullSecret"] = {"name": pull_secret}
        return {
            "source": {
                "type": "Git",
                "git": {"uri": repo.git_url, "ref": "main"},
                "images": [image_source],
            },
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {"to": {"kind": "DockerImage", "name": image}},
        }

    executor = env.executor(settings)
    # Without the secret the registry refuses the pull.
    refused = await executor.run(make_build(spec(None), "private-1"), RecordingReporter())
    assert isinstance(refused, Failed), env.logs.read("team", "private-1").decode()
    assert refused.reason is Reason.PULL_BUILDER_IMAGE_FAILED
    # With it the image is pulled and its file copied into the build context.
    built = await executor.run(make_build(spec("private-pull"), "private-2"), RecordingReporter())
    assert isinstance(built, Succeeded), env.logs.read("team", "private-2").decode()
    listing = run_in(buildah_env, image, "ls", "/tools")
    assert listing.split() == ["busybox"]
    assert "correct-horse" not in env.logs.read("team", "private-2").decode()
