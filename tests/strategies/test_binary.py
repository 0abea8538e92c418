"""Binary builds end to end: the instantiatebinary route in a real aiohttp server with the
real engine, SQLite store and LocalExecutor; uploads made with triggerd.upload (the CLI's
code) from a directory, a file, an archive and a git repository; unsafe uploads refused
with 400 naming the path, nothing stored or unpacked."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.cli.conftest import python_env
from tests.executors.conftest import ExecutorEnv
from tests.strategies.images import image_config, run_in
from tests.support.buildah import BuildahEnv
from tests.support.ports import free_port
from triggerd import upload
from triggerd.engine import Engine
from triggerd.executors.local import LocalExecutor
from triggerd.settings import Settings
from triggerd.store.sqlite import SqliteStore
from triggerd.web import binary
from triggerd.web.app import make_app

pytestmark = pytest.mark.e2e

TOKEN = "binary-test-token-0123456789"
API = "/apis/build.openshift.io/v1/namespaces/team"
TERMINAL = {"Complete", "Failed", "Error", "Cancelled"}


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession
    env: ExecutorEnv
    data_dir: Path

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.url + API + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def upload(self, config: str, **options: Any) -> tuple[int, Any]:
        url = f"{self.url}{API}/buildconfigs/{config}/instantiatebinary"
        status, text = await upload.start_binary(self.session, url, progress=False, **options)
        return status, json.loads(text)

    async def wait(self, name: str) -> dict[str, Any]:
        for _ in range(600):
            _, build = await self.call("GET", f"/builds/{name}")
            if build["status"]["phase"] in TERMINAL:
                return dict(build)
            await asyncio.sleep(0.2)
        raise AssertionError(f"build {name} did not finish")


@contextlib.asynccontextmanager
async def serving(env: ExecutorEnv, settings: Settings) -> AsyncIterator[Server]:
    """The real app (engine, SQLite store, LocalExecutor) with the binary routes."""
    settings = dataclasses.replace(settings, api_tokens=(TOKEN,))
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True)
    logs = env.logs
    engine = Engine(
        settings=settings,
        store=SqliteStore(data_dir / "triggerd.db"),
        executor=LocalExecutor(settings, logs, data_dir / "workspaces"),
        logs=logs,
    )
    app = make_app(engine, logs, settings, extra_routes=binary.ROUTES)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            yield Server(
                url=f"http://127.0.0.1:{port}", session=session, env=env, data_dir=data_dir
            )
    finally:
        await runner.cleanup()


@pytest.fixture
async def server(env: ExecutorEnv) -> AsyncIterator[Server]:
    async with serving(env, env.settings()) as running:
        yield running


async def test_upload_over_max_binary_size_is_refused_with_413(
    env: ExecutorEnv, tmp_path: Path
) -> None:
    base = env.settings()
    settings = dataclasses.replace(
        base,
        max_binary_size=4096,
        max_binary_files=3,
    )
    async with serving(env, settings) as server:
        image = server.env.registry.ref("binary/limits", "v1")
        assert (await server.call("POST", "/buildconfigs", binary_config("limits", image)))[
            0
        ] == 201
        big = tmp_path / "big.bin"
        big.write_bytes(bytes(5000))
        status, doc = await server.upload("limits", from_file=str(big))
        assert status == 413
        assert "maxBinarySize (4096 bytes)" in doc["message"]
        many = tmp_path / "many"
        many.mkdir()
        for i in range(4):
            (many / f"f{i}").write_text("x")
        status, doc = await server.upload("limits", from_dir=str(many))
        assert status == 400
        assert "more than 3 entries" in doc["message"]
        # A bomb: a small upload that unpacks to more than maxBinarySize.
        bomb = tmp_path / "bomb.tar.gz"
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo("zeros")
            info.size = 1024 * 1024
            tar.addfile(info, io.BytesIO(bytes(info.size)))
        bomb.write_bytes(gzip.compress(raw.getvalue()))
        assert bomb.stat().st_size < 4096
        status, doc = await server.upload("limits", from_archive=str(bomb))
        assert status == 400
        assert "zeros: unpacks to more than the limit of 4096 bytes" in doc["message"]
        assert (await server.call("GET", "/builds"))[1]["items"] == []
        uploads = server.data_dir / "uploads"
        assert [p for p in uploads.rglob("*") if p.is_file()] == []


def binary_config(name: str, output: str, **binary_options: Any) -> dict[str, Any]:
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {
            "source": {"type": "Binary", "binary": binary_options},
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {"to": {"kind": "DockerImage", "name": output}},
        },
    }


def context(tmp: Path, base: str, marker: str) -> Path:
    directory = tmp / "ctx"
    directory.mkdir()
    (directory / "Dockerfile").write_text(
        f"FROM {base}\nCOPY . /ctx\nRUN test ! -e /ctx/.git && cat /ctx/marker\n"
    )
    (directory / "marker").write_text(marker + "\n")
    (directory / ".git").mkdir()
    (directory / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return directory


async def test_from_dir_builds_and_pushes_without_git(server: Server, tmp_path: Path) -> None:
    image = server.env.registry.ref("binary/from-dir", "v1")
    status, _ = await server.call("POST", "/buildconfigs", binary_config("from-dir", image))
    assert status == 201
    directory = context(tmp_path, server.env.base_image, "uploaded-dir")
    status, build = await server.upload("from-dir", from_dir=str(directory))
    assert status == 201, build
    assert build["metadata"]["annotations"]["triggerd.dev/binary-input"].startswith("sha256:")
    done = await server.wait(build["metadata"]["name"])
    log = server.env.logs.read("team", build["metadata"]["name"]).decode()
    assert done["status"]["phase"] == "Complete", log
    assert "uploaded-dir" in log
    assert server.env.registry.head_digest("binary/from-dir", "v1") is not None

    # Without an upload the BuildConfig cannot start (OpenShift refuses it too)...
    status, refused = await server.call(
        "POST",
        "/buildconfigs/from-dir/instantiate",
        {"kind": "BuildRequest", "metadata": {"name": "from-dir"}},
    )
    assert status == 400
    assert "cannot start a binary build without input" in refused["message"]
    # ...but the upload is kept as the build's input: its clone builds it again.
    name = build["metadata"]["name"]
    status, rerun = await server.call(
        "POST", f"/builds/{name}/clone", {"kind": "BuildRequest", "metadata": {"name": name}}
    )
    assert status == 201, rerun
    digest = build["metadata"]["annotations"]["triggerd.dev/binary-input"]
    assert rerun["metadata"]["annotations"]["triggerd.dev/binary-input"] == digest
    rerun_done = await server.wait(rerun["metadata"]["name"])
    rerun_log = server.env.logs.read("team", rerun["metadata"]["name"]).decode()
    assert rerun_done["status"]["phase"] == "Complete", rerun_log
    # The same upload unpacked again (the RUN itself comes from the layer cache now).
    unpacked = [line for line in log.splitlines() if line.startswith("    tar: ")]
    assert unpacked and unpacked[0] in rerun_log.splitlines()
    assert (
        server.env.registry.head_digest("binary/from-dir", "v1")
        == rerun_done["status"]["output"]["to"]["imageDigest"]
    )


async def test_from_file_and_from_archive(server: Server, tmp_path: Path) -> None:
    base = server.env.base_image
    image = server.env.registry.ref("binary/as-file", "v1")
    # asFile: the upload is one file next to an inline Dockerfile.
    config = binary_config("as-file", image)
    config["spec"]["source"]["dockerfile"] = (
        f"FROM {base}\nCOPY app.conf /app.conf\nRUN cat /app.conf\n"
    )
    assert (await server.call("POST", "/buildconfigs", config))[0] == 201
    single = tmp_path / "app.conf"
    single.write_text("single-file-content\n")
    status, build = await server.upload("as-file", from_file=str(single), commit="abc123")
    assert status == 201, build
    assert build["spec"]["revision"]["git"]["commit"] == "abc123"
    done = await server.wait(build["metadata"]["name"])
    log = server.env.logs.read("team", build["metadata"]["name"]).decode()
    assert done["status"]["phase"] == "Complete", log
    assert "single-file-content" in log

    # A prepared zip archive is sent unchanged and unpacked on the server.
    archive_image = server.env.registry.ref("binary/archive", "v1")
    config = binary_config("archive", archive_image)
    assert (await server.call("POST", "/buildconfigs", config))[0] == 201
    directory = context(tmp_path, base, "from-zip")
    (directory / ".git" / "HEAD").unlink()
    (directory / ".git").rmdir()
    zipped = tmp_path / "ctx.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for name in ("Dockerfile", "marker"):
            zf.write(directory / name, name)
    status, build = await server.upload("archive", from_archive=str(zipped))
    assert status == 201, build
    done = await server.wait(build["metadata"]["name"])
    log = server.env.logs.read("team", build["metadata"]["name"]).decode()
    assert done["status"]["phase"] == "Complete", log
    assert "from-zip" in log


async def test_from_repo_sends_the_commit_and_its_revision(server: Server, tmp_path: Path) -> None:
    image = server.env.registry.ref("binary/from-repo", "v1")
    assert (await server.call("POST", "/buildconfigs", binary_config("from-repo", image)))[0] == 201
    repo = make_repository(tmp_path / "repo", server.env.base_image)
    status, build = await server.upload("from-repo", from_repo=str(repo))
    assert status == 201, build
    revision = build["spec"]["revision"]["git"]
    assert revision["author"] == {"name": "Ada", "email": "ada@example.com"}
    assert revision["message"] == "Add marker"
    done = await server.wait(build["metadata"]["name"])
    log = server.env.logs.read("team", build["metadata"]["name"]).decode()
    assert done["status"]["phase"] == "Complete", log
    assert "committed-marker" in log and "uncommitted change" not in log
    # The revision instantiatebinary was given is in the image, as for a git build.
    config = image_config(server.env.registry, "binary/from-repo", "v1")
    commit = revision["commit"]
    assert f"OPENSHIFT_BUILD_COMMIT={commit}" in config["Env"]
    assert f"OPENSHIFT_BUILD_NAME={build['metadata']['name']}" in config["Env"]
    labels = config["Labels"]
    assert labels["io.openshift.build.commit.id"] == commit
    assert labels["io.openshift.build.commit.author"] == "Ada <ada@example.com>"
    assert labels["io.openshift.build.commit.message"] == "Add marker"
    assert labels["org.opencontainers.image.revision"] == commit


async def test_cli_from_repo_with_an_earlier_commit(
    server: Server, tmp_path: Path, buildah_env: BuildahEnv
) -> None:
    """``triggerd start-build BC --from-repo DIR --commit HEAD~1``, the command itself: the
    build gets HEAD~1's files and that commit's sha, message and author, not HEAD's."""
    image = server.env.registry.ref("binary/from-repo-commit", "v1")
    config = binary_config("from-repo-commit", image)
    assert (await server.call("POST", "/buildconfigs", config))[0] == 201
    repo = make_repository(tmp_path / "repo", server.env.base_image)
    first = add_second_commit(repo)
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "triggerd", "start-build", "from-repo-commit", "-n", "team",
        "--from-repo", str(repo), "--commit", "HEAD~1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=python_env({"TRIGGERD_SERVER": server.url, "TRIGGERD_TOKEN": TOKEN}),
    )  # fmt: skip
    out, err = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, (out, err)
    assert out.decode() == "build/from-repo-commit-1 started\n"
    status, build = await server.call("GET", "/builds/from-repo-commit-1")
    assert status == 200, build
    revision = build["spec"]["revision"]["git"]
    assert revision["commit"] == first
    assert revision["message"] == "Add marker"
    assert revision["author"] == {"name": "Ada", "email": "ada@example.com"}
    done = await server.wait("from-repo-commit-1")
    log = server.env.logs.read("team", "from-repo-commit-1").decode()
    assert done["status"]["phase"] == "Complete", log
    # The image has the first commit's marker (the log may not show it: the RUN that
    # prints it can come from the layer cache of another test's identical build).
    assert run_in(buildah_env, image, "cat", "/m") == "committed-marker\n"
    labels = image_config(server.env.registry, "binary/from-repo-commit", "v1")["Labels"]
    assert labels["io.openshift.build.commit.id"] == first


def make_repository(repo: Path, base: str) -> Path:
    """A local git repository with one commit, plus an uncommitted change."""
    repo.mkdir()
    (repo / "Dockerfile").write_text(f"FROM {base}\nCOPY marker /m\nRUN cat /m\n")
    (repo / "marker").write_text("committed-marker\n")
    git = ["git", "-C", str(repo), "-c", "user.name=Ada", "-c", "user.email=ada@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Add marker"], check=True)
    (repo / "marker").write_text("uncommitted change\n")
    return repo


def add_second_commit(repo: Path) -> str:
    """Commit a changed marker (by Grace) on top of :func:`make_repository`'s commit;
    returns the sha of that first commit."""
    git = ["git", "-C", str(repo), "-c", "user.name=Grace", "-c", "user.email=grace@example.com"]
    first = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    (repo / "marker").write_text("second-commit-marker\n")
    subprocess.run([*git, "commit", "-q", "-am", "Change marker"], check=True)
    return first.stdout.strip()


def evil_tar(name: str, *links: tuple[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
        for link_name, target in links:
            link = tarfile.TarInfo(link_name)
            link.type = tarfile.SYMTYPE
            link.linkname = target
            tar.addfile(link)
    return raw.getvalue()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (evil_tar("../../escape"), "../../escape: '..' is not allowed"),
        (evil_tar("/etc/escape"), "/etc/escape: absolute paths"),
        # Each link looks inside on its own; through d -> . the second one is ../escape.
        (
            evil_tar("ok", ("d", "."), ("a", "d/../escape")),
            "a: symlink to 'd/../escape' points outside the build context",
        ),
        (b"plain text, not an archive" * 40, "not a tar"),
    ],
    ids=["traversal", "absolute", "link escape", "garbage"],
)
async def test_unsafe_upload_is_refused_with_400_and_nothing_kept(
    server: Server, body: bytes, message: str
) -> None:
    image = server.env.registry.ref("binary/unsafe", "v1")
    assert (await server.call("POST", "/buildconfigs", binary_config("unsafe", image)))[0] == 201
    url = f"{server.url}{API}/buildconfigs/unsafe/instantiatebinary"
    async with server.session.post(url, data=body) as resp:
        status, doc = resp.status, await resp.json(content_type=None)
    assert status == 400
    assert message in doc["message"]
    assert (await server.call("GET", "/builds"))[1]["items"] == []
    uploads = server.data_dir / "uploads"
    assert [p for p in uploads.rglob("*") if p.is_file()] == []


async def test_non_binary_config_and_bad_as_file(server: Server) -> None:
    image = server.env.registry.ref("binary/git", "v1")
    config = binary_config("git-config", image)
    config["spec"]["source"] = {"git": {"uri": "https://example.com/x.git"}}
    assert (await server.call("POST", "/buildconfigs", config))[0] == 201
    url = f"{server.url}{API}/buildconfigs/git-config/instantiatebinary"
    async with server.session.post(url, data=b"x") as resp:
        assert resp.status == 400
        assert "does not have binary source" in (await resp.json())["message"]
    async with server.session.post(url, data=b"x", params={"asFile": "../x"}) as resp:
        assert resp.status == 400
        assert "asFile" in (await resp.json())["message"]


async def test_as_file_of_the_buildconfig_alone(server: Server) -> None:
    """source.binary.asFile on the BuildConfig: the body is that one file, no archive."""
    base = server.env.base_image
    image = server.env.registry.ref("binary/config-as-file", "v1")
    config = binary_config("config-as-file", image, asFile="app.conf")
    config["spec"]["source"]["dockerfile"] = (
        f"FROM {base}\nCOPY app.conf /app.conf\nRUN cat /app.conf\n"
    )
    assert (await server.call("POST", "/buildconfigs", config))[0] == 201
    url = f"{server.url}{API}/buildconfigs/config-as-file/instantiatebinary"
    async with server.session.post(url, data=b"config-level-as-file\n") as resp:
        status, build = resp.status, await resp.json(content_type=None)
    assert status == 201, build
    assert build["metadata"]["annotations"]["triggerd.dev/binary-as-file"] == "app.conf"
    done = await server.wait(build["metadata"]["name"])
    log = server.env.logs.read("team", build["metadata"]["name"]).decode()
    assert done["status"]["phase"] == "Complete", log
    assert "config-level-as-file" in log


async def test_s2i_build_from_an_uploaded_directory(
    server: Server, tmp_path: Path, builder_image: str, buildah_env: BuildahEnv
) -> None:
    image = server.env.registry.ref("binary/s2i", "v1")
    config = binary_config("s2i-upload", image)
    config["spec"]["strategy"] = {
        "type": "Source",
        "sourceStrategy": {"from": {"kind": "DockerImage", "name": builder_image}},
    }
    assert (await server.call("POST", "/buildconfigs", config))[0] == 201
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "message").write_text("s2i from an upload\n")
    (directory / "version").write_text("v-upload\n")
    status, build = await server.upload("s2i-upload", from_dir=str(directory))
    assert status == 201, build
    done = await server.wait(build["metadata"]["name"])
    log = server.env.logs.read("team", build["metadata"]["name"]).decode()
    assert done["status"]["phase"] == "Complete", log
    assert "| RUN /usr/libexec/s2i/assemble" in log
    assert run_in(buildah_env, image, "/usr/libexec/s2i/run") == "s2i from an upload\n"
    assert image_config(server.env.registry, "binary/s2i", "v1")["User"] == "1001"
