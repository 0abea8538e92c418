"""A real ``triggerd serve`` process for end-to-end tests, and a small client for it.

The server runs as a subprocess (so kill -9 and restarts are real) on a free 127.0.0.1 port
with its own data directory; the client speaks the REST API with the test's bearer token.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port
from tests.support.processes import ManagedProcess, start_process, wait_for, wait_for_http

TOKEN = "e2e-test-token-0123456789"
API = "/apis/build.openshift.io/v1/namespaces/default"
TERMINAL = {"Complete", "Failed", "Error", "Cancelled"}


class TriggerdServer:
    def __init__(self, data_dir: Path, settings: Mapping[str, Any]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = data_dir / "triggerd.yaml"
        doc = {
            "listen": f"127.0.0.1:{self.port}",
            "dataDir": str(data_dir / "data"),
            "apiTokens": [TOKEN],
            **settings,
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(doc))
        self.process: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> TriggerdServer:
        self.starts += 1
        self.process = start_process(
            [sys.executable, "-m", "triggerd", "serve", "--config", str(self.config)],
            log_path=self.data_dir / f"server-{self.starts}.log",
            name="triggerd",
        )
        wait_for_http(f"{self.url}/readyz", timeout=30, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL the server process alone, as a crash (OOM killer, power cut) would."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        wait_for(
            lambda: not self.process or not self.process.running, timeout=10, what="triggerd to die"
        )

    def log_text(self) -> str:
        return self.process.log_text() if self.process else ""

    # REST -------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        content_type: str = "application/json",
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get_content_type())
        except urllib.error.HTTPError as e:
            return e.code, _decode(e.read(), e.headers.get_content_type())

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(method, path, body)
        assert 200 <= status < 300, (status, answer)
        return answer

    def apply(self, doc: Mapping[str, Any]) -> Any:
        return self.ok("POST", f"{API}/buildconfigs", doc)

    def start_build(self, config: str, request: Mapping[str, Any] | None = None) -> str:
        build = self.ok(
            "POST",
            f"{API}/buildconfigs/{config}/instantiate",
            {"kind": "BuildRequest", "metadata": {"name": config}, **(request or {})},
        )
        return str(build["metadata"]["name"])

    def build(self, name: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"{API}/builds/{name}"))

    def log(self, name: str) -> str:
        status, text = self.request("GET", f"{API}/builds/{name}/log")
        assert status == 200
        return str(text)

    def wait_build(
        self,
        name: str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 120,
    ) -> dict[str, Any]:
        check = until or (lambda b: b["status"]["phase"] in TERMINAL)
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.build(name))
            return check(found)

        wait_for(reached, timeout=timeout, what=f"build {name}", process=self.process)
        return found


def _decode(body: bytes, content_type: str) -> Any:
    if content_type == "application/json":
        return json.loads(body)
    return body.decode("utf-8", "replace")


def elapsed(build: Mapping[str, Any]) -> float:
    return float(build["status"].get("duration", 0)) / 1e9


def now() -> float:
    return time.monotonic()
