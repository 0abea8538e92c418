"""``triggerd serve``: the generated API token, SIGHUP reloads and a graceful SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.cli.conftest import make_server, python_env, triggerd, write_buildconfig
from tests.support.processes import wait_for
from triggerd import server as server_module


def get_json(url: str, token: str) -> dict[str, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        doc: dict[str, object] = json.load(response)
        return doc


def test_token_is_generated_0600_reused_and_never_logged(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    srv.start()
    path = srv.data_dir / "api-token"
    token = srv.token
    assert len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert srv.process.stop() == 0
    srv.start()
    assert srv.token == token
    ok = triggerd("get", "bc", "--server", srv.url, "--token", token)
    assert ok.code == 0, ok
    with urllib.request.urlopen(f"{srv.url}/openapi.json", timeout=5) as response:
        paths = json.load(response)["paths"]
    assert any("/webhooks/" in path for path in paths)  # the webhook routes are served too
    assert srv.process.stop() == 0
    log = srv.process.log_text()
    assert log.count(f"API token stored in {path}") == 2
    assert token not in log


def test_configured_tokens_mean_no_token_file(tmp_path: Path) -> None:
    srv = make_server(tmp_path, {"apiTokens": ["configured-token-1"]})
    srv.start()
    try:
        assert not (srv.data_dir / "api-token").exists()
        result = triggerd("get", "bc", "--server", srv.url, "--token", "configured-token-1")
        assert result.code == 0, result
    finally:
        assert srv.process.stop() == 0


def test_ensure_api_token_tightens_a_loosened_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = server_module.ensure_api_token(tmp_path)
    path = tmp_path / "api-token"
    path.chmod(0o644)
    assert server_module.ensure_api_token(tmp_path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in caplog.text
    assert f"API token stored in {path}" in caplog.text
    assert not [p for p in tmp_path.iterdir() if p.name != "api-token"]  # no temp files left


def test_sighup_reloads_buildconfig_files_and_keeps_them_on_errors(
    tmp_path: Path, closed_port: int
) -> None:
    srv = make_server(tmp_path)
    write_buildconfig(srv.buildconfigs_dir, "hup", port=closed_port, ref="main")
    srv.start()
    try:
        url = f"{srv.url}/apis/build.openshift.io/v1/namespaces/default/buildconfigs/hup"

        def ref() -> object:
            spec = get_json(url, srv.token)["spec"]
            assert isinstance(spec, dict)
            return spec["source"]["git"]["ref"]

        assert ref() == "main"
        write_buildconfig(srv.buildconfigs_dir, "hup", port=closed_port, ref="next")
        os.kill(srv.process.pid, signal.SIGHUP)
        wait_for(lambda: ref() == "next", timeout=15, what="reloaded ref", process=srv.process)
        (srv.buildconfigs_dir / "broken.yaml").write_text("kind: BuildConfig\nspec: [\n")
        write_buildconfig(srv.buildconfigs_dir, "hup", port=closed_port, ref="ignored")
        os.kill(srv.process.pid, signal.SIGHUP)
        wait_for(
            lambda: "reloading BuildConfigs failed" in srv.process.log_text(),
            timeout=15,
            what="reload error logged",
            process=srv.process,
        )
        assert ref() == "next"  # the broken file stopped the reload; what was loaded stays
        assert srv.process.running
    finally:
        assert srv.process.stop() == 0


def test_sigterm_ends_log_streams_and_exits_cleanly(tmp_path: Path, black_hole: int) -> None:
    srv = make_server(tmp_path)
    write_buildconfig(srv.buildconfigs_dir, "long", port=black_hole)
    srv.start()
    follower: subprocess.Popen[str] | None = None
    try:
        assert triggerd("start-build", "long", server=srv).code == 0

        def running() -> bool:
            url = f"{srv.url}/apis/build.openshift.io/v1/namespaces/default/builds/long-1"
            status = get_json(url, srv.token)["status"]
            return isinstance(status, dict) and status.get("phase") == "Running"

        wait_for(running, timeout=30, what="long-1 running", process=srv.process)
        follower = subprocess.Popen(
            [sys.executable, "-m", "triggerd", "logs", "-f", "long-1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env({"TRIGGERD_SERVER": srv.url, "TRIGGERD_DATA_DIR": str(srv.data_dir)}),
        )
        # The stream is open once the follower printed the first log line.
        assert follower.stdout is not None
        assert follower.stdout.readline()
        os.kill(srv.process.pid, signal.SIGTERM)
        wait_for(lambda: not srv.process.running, timeout=15, what="server exit")
        assert srv.process.returncode == 0
        follower.communicate(timeout=15)
        assert "triggerd stopped" in srv.process.log_text()
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        srv.process.stop()
