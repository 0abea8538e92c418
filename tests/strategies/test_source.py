"""Source (S2I) strategy end to end: a real builder image, git, buildah and registry.

The builder image (tests/strategies/conftest.py) is busybox with assemble, run and
save-artifacts scripts; each test builds a repository with it through the LocalExecutor and
looks at the pushed image: its config, and files read by running it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build
from tests.strategies.conftest import MINIMAL_SCRIPTS_DIR
from tests.strategies.images import image_config, run_in
from tests.support.buildah import BuildahEnv
from tests.support.gitrepo import Executable, GitRepoFactory
from tests.support.ports import free_port
from triggerd.executors.base import Failed, Succeeded
from triggerd.model.builds import Reason, StageName

pytestmark = pytest.mark.e2e


def s2i_spec(uri: str, builder: str, output: str, **strategy: Any) -> dict[str, Any]:
    return {
        "source": {"type": "Git", "git": {"uri": uri, "ref": "main"}},
        "strategy": {
            "type": "Source",
            "sourceStrategy": {"from": {"kind": "DockerImage", "name": builder}, **strategy},
        },
        "output": {"to": {"kind": "DockerImage", "name": output}},
    }


async def test_s2i_build_with_builder_scripts(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, builder_image: str,
    buildah_env: BuildahEnv,
) -> None:  # fmt: skip
    repo = git_repo_factory(
        "s2i-app",
        {
            "message": "hello from s2i\n",
            "version": "v1\n",
            ".s2i/environment": "# repository defaults\nGREETING=from-file\nFROM_CONFIG=file\n",
        },
    )
    image = env.registry.ref("strategies/s2i-app", "v1")
    spec = s2i_spec(
        repo.git_url, builder_image, image, env=[{"name": "FROM_CONFIG", "value": "config"}]
    )
    reporter = RecordingReporter()
    outcome = await env.executor().run(make_build(spec, "s2i-app-1"), reporter)
    log = env.logs.read("team", "s2i-app-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert [s.name for s in reporter.stages] == [
        StageName.FETCH_INPUTS, StageName.PULL_IMAGES, StageName.BUILD, StageName.PUSH_IMAGE,
    ]  # fmt: skip
    # The generated Dockerfile is in the log, as OpenShift shows it.
    assert "Generated Dockerfile:" in log
    assert f"| FROM {builder_image}" in log
    assert "| USER 1001" in log
    assert "| RUN /usr/libexec/s2i/assemble" in log
    assert "assemble: uid 1001 GREETING=from-file FROM_CONFIG=config" in log

    config = image_config(env.registry, "strategies/s2i-app", "v1")
    assert config["User"] == "1001"
    assert config["Cmd"] == ["/bin/sh", "-c", "/usr/libexec/s2i/run"]
    labels = config["Labels"]
    assert labels["io.openshift.build.image"] == builder_image
    assert labels["io.openshift.s2i.scripts-url"] == "image:///usr/libexec/s2i"
    assert labels["io.openshift.build.commit.id"] == repo.rev_parse("main")
    assert "OPENSHIFT_BUILD_NAME=s2i-app-1" in config["Env"]
    assert f"OPENSHIFT_BUILD_COMMIT={repo.rev_parse('main')}" in config["Env"]
    # Running the image runs the run script; assemble ran as 1001 with the merged env.
    assert run_in(buildah_env, image, "/usr/libexec/s2i/run") == "hello from s2i\n"
    assert run_in(buildah_env, image, "cat", "/opt/app/assembled-by") == "1001\n"


async def test_source_scripts_override_the_builder_image(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, builder_image: str,
    buildah_env: BuildahEnv,
) -> None:  # fmt: skip
    repo = git_repo_factory(
        "s2i-own-scripts",
        {
            "message": "unused\n",
            "version": "v1\n",
            ".s2i/bin/assemble": Executable(
                "#!/bin/sh\nset -e\necho 'custom assemble ran'\necho custom > /opt/app/marker\n"
            ),
        },
    )
    image = env.registry.ref("strategies/s2i-own-scripts", "v1")
    outcome = await env.executor().run(
        make_build(s2i_spec(repo.git_url, builder_image, image), "own-1"), RecordingReporter()
    )
    log = env.logs.read("team", "own-1").decode()
    assert isinstance(outcome, Succeeded), log
    assert "assemble: source .s2i/bin/assemble" in log
    assert "run: image /usr/libexec/s2i/run" in log
    assert "custom assemble ran" in log
    assert run_in(buildah_env, image, "cat", "/opt/app/marker") == "custom\n"
    # The run script still comes from the builder image.
    assert image_config(env.registry, "strategies/s2i-own-scripts", "v1")["Cmd"] == [
        "/bin/sh", "-c", "/usr/libexec/s2i/run",
    ]  # fmt: skip


async def test_incremental_build_restores_saved_artifacts(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, builder_image: str,
    buildah_env: BuildahEnv,
) -> None:  # fmt: skip
    repo = git_repo_factory("s2i-incremental", {"message": "m\n", "version": "v1\n"})
    image = env.registry.ref("strategies/s2i-incremental", "latest")
    spec = s2i_spec(repo.git_url, builder_image, image, incremental=True)
    executor = env.executor()

    first = await executor.run(make_build(spec, "inc-1"), RecordingReporter())
    log1 = env.logs.read("team", "inc-1").decode()
    assert isinstance(first, Succeeded), log1
    assert "incremental: no previous image" in log1
    assert "assemble: restored" not in log1

    repo.commit({"version": "v2\n"}, message="v2")
    second = await executor.run(make_build(spec, "inc-2"), RecordingReporter())
    log2 = env.logs.read("team", "inc-2").decode()
    assert isinstance(second, Succeeded), log2
    # The first image's save-artifacts output (its cache.txt, "v1") reached assemble.
    assert "assemble: restored v1" in log2
    assert run_in(buildah_env, image, "cat", "/opt/app/restored.txt") == "v1\n"
    assert run_in(buildah_env, image, "cat", "/opt/app/cache.txt") == "v2\n"


async def test_builder_without_scripts_fails_with_a_clear_reason(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory("s2i-no-scripts", {"message": "m\n"})
    image = env.registry.ref("strategies/s2i-no-scripts", "v1")
    # The plain busybox base has no S2I label and the repository no .s2i/bin.
    outcome = await env.executor().run(
        make_build(s2i_spec(repo.git_url, env.base_image, image), "none-1"), RecordingReporter()
    )
    log = env.logs.read("team", "none-1").decode()
    assert isinstance(outcome, Failed), log
    assert outcome.reason is Reason.DOCKER_BUILD_FAILED
    assert "no assemble script" in outcome.message
    assert env.registry.head_digest("strategies/s2i-no-scripts", "v1") is None


class ScriptServer:
    """S2I scripts over HTTP on 127.0.0.1: ``/s2i/<name>`` for the scripts given, 404 for
    the rest; counts the requests per path."""

    def __init__(self, scripts: dict[str, str]) -> None:
        self.scripts = scripts
        self.port = free_port()
        self.requests: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/s2i"

    async def __aenter__(self) -> ScriptServer:
        app = web.Application()
        app.router.add_get("/s2i/{name}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests[name] = self.requests.get(name, 0) + 1
        if name not in self.scripts:
            raise web.HTTPNotFound()
        return web.Response(body=self.scripts[name].encode())


URL_ASSEMBLE = """#!/bin/sh
set -e
echo "url assemble: uid $(id -u)"
id -u > /tmp/src/assembled-by
"""
URL_RUN = """#!/bin/sh
exec cat /tmp/src/message
"""


async def test_scripts_url_serving_only_assemble_and_run_with_a_non_root_builder(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, builder_image: str,
    buildah_env: BuildahEnv, tmp_path: Path,
) -> None:  # fmt: skip
    # A builder whose image runs as a non-root user of its own (not OpenShift's 1001).
    where = tmp_path / "user-builder"
    where.mkdir()
    (where / "Containerfile").write_text(f"FROM {builder_image}\nUSER 1002\n")
    local = "localhost/triggerd-tests/s2i-user-builder:latest"
    buildah_env.run("build", "--isolation", "chroot", "--tls-verify=false",
                    "-f", str(where / "Containerfile"), "-t", local, str(where))  # fmt: skip
    user_builder = env.registry.ref("builders/s2i-user-1002", "latest")
    buildah_env.push(local, user_builder, creds=env.registry.auth)

    repo = git_repo_factory("s2i-url-scripts", {"message": "served by url scripts\n"})
    image = env.registry.ref("strategies/s2i-url-scripts", "v1")
    async with ScriptServer({"assemble": URL_ASSEMBLE, "run": URL_RUN}) as scripts:
        spec = s2i_spec(repo.git_url, user_builder, image, scripts=scripts.url, incremental=True)
        outcome = await env.executor().run(make_build(spec, "url-1"), RecordingReporter())
        log = env.logs.read("team", "url-1").decode()
        assert isinstance(outcome, Succeeded), log
        # Each script was asked for; save-artifacts falls back to the builder's label.
        assert set(scripts.requests) == {"assemble", "run", "save-artifacts"}
    assert f"assemble: url {scripts.url}/assemble" in log
    assert f"save-artifacts: not at {scripts.url}/save-artifacts (HTTP 404)" in log
    assert "save-artifacts: image /usr/libexec/s2i/save-artifacts" in log
    assert "| USER 1002" in log
    assert "url assemble: uid 1002" in log
    config = image_config(env.registry, "strategies/s2i-url-scripts", "v1")
    assert config["User"] == "1002"
    assert config["Cmd"] == ["/bin/sh", "-c", "/tmp/scripts/run"]
    assert run_in(buildah_env, image, "/tmp/scripts/run") == "served by url scripts\n"
    assert run_in(buildah_env, image, "cat", "/tmp/src/assembled-by") == "1002\n"


async def test_image_scripts_url_and_incremental_without_save_artifacts(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory, builder_image: str,
    buildah_env: BuildahEnv,
) -> None:  # fmt: skip
    repo = git_repo_factory("s2i-minimal", {"message": "m\n", "version": "v1\n"})
    image = env.registry.ref("strategies/s2i-minimal", "latest")
    spec = s2i_spec(
        repo.git_url, builder_image, image, incremental=True,
        scripts=f"image://{MINIMAL_SCRIPTS_DIR}",
    )  # fmt: skip
    executor = env.executor()
    first = await executor.run(make_build(spec, "min-1"), RecordingReporter())
    log1 = env.logs.read("team", "min-1").decode()
    assert isinstance(first, Succeeded), log1
    assert f"assemble: image {MINIMAL_SCRIPTS_DIR}/assemble" in log1
    assert f"| RUN {MINIMAL_SCRIPTS_DIR}/assemble" in log1

    # The scripts location has no save-artifacts: the previous image is there, but the
    # guard makes restoring a no-op instead of a failed build.
    second = await executor.run(make_build(spec, "min-2"), RecordingReporter())
    log2 = env.logs.read("team", "min-2").decode()
    assert isinstance(second, Succeeded), log2
    assert "incremental: restoring artifacts from" in log2
    assert "assemble: restored" not in log2

    # A save-artifacts from the source (without the image:// scripts URL, which s2i trusts
    # over .s2i/bin) is copied into the stage that runs it: the previous image never had it.
    repo.commit(
        {"version": "v3\n",
         ".s2i/bin/save-artifacts": Executable("#!/bin/sh\ncd /opt/app && tar -cf - cache.txt\n")},
        message="save artifacts",
    )  # fmt: skip
    spec = s2i_spec(repo.git_url, builder_image, image, incremental=True)
    third = await executor.run(make_build(spec, "min-3"), RecordingReporter())
    log3 = env.logs.read("team", "min-3").decode()
    assert isinstance(third, Succeeded), log3
    assert "save-artifacts: source .s2i/bin/save-artifacts" in log3
    assert "assemble: restored v1" in log3  # min-2's cache.txt (from the unchanged version)
    assert run_in(buildah_env, image, "cat", "/opt/app/cache.txt") == "v3\n"
