"""Fixtures for the CLI tests: a real ``triggerd serve`` subprocess on a free 127.0.0.1 port
(real SQLite store and local executor) and a runner for ``python -m triggerd`` commands.

Builds in these tests never reach buildah: their git source is either a closed port (the
fetch fails at once: Failed) or a socket that accepts and never answers (the fetch hangs
until the build is cancelled), so no network beyond 127.0.0.1 is touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import buildconfig_doc
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import ManagedProcess, wait_for_http

REPO = Path(__file__).resolve().parents[2]


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIGGERD_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@dataclass
class Server:
    url: str
    port: int
    data_dir: Path
    config_path: Path
    buildconfigs_dir: Path
    process: ManagedProcess

    def start(self) -> None:
        self.process.start()
        wait_for_http(f"{self.url}/readyz", timeout=30, process=self.process)

    @property
    def token(self) -> str:
        return (self.data_dir / "api-token").read_text().strip()


def make_server(base: Path, settings: Mapping[str, Any] | None = None) -> Server:
    port = free_port()
    data_dir = base / "data"
    buildconfigs_dir = base / "buildconfigs"
    buildconfigs_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "listen": f"{LOOPBACK}:{port}",
        "dataDir": str(data_dir),
        "buildConfigs": [str(buildconfigs_dir)],
        # Room for a few builds at once, so a build one test leaves hanging cannot starve
        # the next test's; queueing is shown with the Serial run policy instead.
        "maxConcurrentBuilds": 4,
        **(settings or {}),
    }
    config_path = base / "triggerd.yaml"
    config_path.write_text(yaml.safe_dump(config))
    process = ManagedProcess(
        [sys.executable, "-m", "triggerd", "serve", "--config", str(config_path)],
        log_path=base / "server.log",
        env=python_env(),
        cwd=base,
        name="triggerd",
    )
    return Server(
        url=f"http://{LOOPBACK}:{port}",
        port=port,
        data_dir=data_dir,
        config_path=config_path,
        buildconfigs_dir=buildconfigs_dir,
        process=process,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a test module; tests keep apart by using their own namespaces."""
    srv = make_server(tmp_path_factory.mktemp("server"))
    srv.start()
    try:
        yield srv
    finally:
        code = srv.process.stop()
        if code != 0:
            print(srv.process.log_tail(80))


@pytest.fixture(scope="module")
def black_hole() -> Iterator[int]:
    """A 127.0.0.1 port that accepts connections and never answers (a hanging git fetch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (a git fetch fails at once)."""
    return free_port()


@dataclass
class Result:
    code: int
    out: str
    err: str


def triggerd(
    *args: str, server: Server | None = None, env: Mapping[str, str] | None = None
) -> Result:
    """Run ``python -m triggerd ARGS`` against ``server`` (token read from its data dir)."""
    extra: dict[str, str] = {}
    if server is not None:
        extra = {"TRIGGERD_SERVER": server.url, "TRIGGERD_DATA_DIR": str(server.data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "triggerd", *args],
        capture_output=True,
        text=True,
        env=python_env({**extra, **(env or {})}),
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def write_buildconfig(
    folder: Path, name: str, *, port: int, namespace: str = "default", **kwargs: Any
) -> Path:
    doc = buildconfig_doc(
        name,
        namespace=namespace,
        uri=f"git://{LOOPBACK}:{port}/{name}.git",
        output=f"{LOOPBACK}:1/test/{name}:latest",
        **kwargs,
    )
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
