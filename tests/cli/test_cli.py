"""The ``triggerd`` command against a real server: output, messages and exit codes 0/1/2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.cli.conftest import Result, Server, python_env, triggerd, write_buildconfig
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import wait_for
from triggerd import cli

#: A build that cannot fetch its source ends Failed; Error if triggerd itself tripped.
FAILED = ("Failed", "Error")


def ok(result: Result) -> str:
    assert result.code == 0, (result.code, result.out, result.err)
    return result.out


def phase(server: Server, namespace: str, name: str) -> str:
    """The build's phase read over HTTP ("" while it does not exist yet)."""
    url = f"{server.url}/apis/build.openshift.io/v1/namespaces/{namespace}/builds/{name}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {server.token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.load(response)["status"]["phase"])
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return ""
        raise


def test_apply_created_unchanged_configured(
    server: Server, tmp_path: Path, black_hole: int
) -> None:
    ns = "apply"
    write_buildconfig(tmp_path, "one", port=black_hole, namespace=ns)
    write_buildconfig(tmp_path, "two", port=black_hole)  # no namespace: -n decides
    doc = yaml.safe_load((tmp_path / "two.yaml").read_text())
    del doc["metadata"]["namespace"]
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(doc))
    out = ok(triggerd("apply", "-f", str(tmp_path), "-n", ns, server=server))
    assert out.splitlines() == ["buildconfig/one created", "buildconfig/two created"]
    out = ok(triggerd("apply", "-f", str(tmp_path), "-n", ns, server=server))
    assert out.splitlines() == ["buildconfig/one unchanged", "buildconfig/two unchanged"]
    write_buildconfig(tmp_path, "one", port=black_hole, namespace=ns, ref="release")
    out = ok(triggerd("apply", "-f", str(tmp_path / "one.yaml"), "-n", ns, server=server))
    assert out.splitlines() == ["buildconfig/one configured"]
    got = json.loads(ok(triggerd("get", "bc", "one", "-n", ns, "-o", "json", server=server)))
    assert got["spec"]["source"]["git"]["ref"] == "release"


def test_apply_reports_invalid_documents(server: Server, tmp_path: Path, black_hole: int) -> None:
    path = write_buildconfig(tmp_path, "bad", port=black_hole, namespace="apply-bad")
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["source"]["contextDir"] = "../up"
    path.write_text(yaml.safe_dump(doc))
    result = triggerd("apply", "-f", str(path), server=server)
    assert result.code == 2
    assert "spec.source.contextDir" in result.err
    assert result.err.startswith("error: ")
    result = triggerd("apply", "-f", str(tmp_path / "missing.yaml"), server=server)
    assert result.code == 2
    assert "no such file" in result.err


def test_get_tables_and_formats(server: Server, tmp_path: Path, closed_port: int) -> None:
    ns = "get"
    write_buildconfig(tmp_path, "web", port=closed_port, namespace=ns)
    ok(triggerd("apply", "-f", str(tmp_path), server=server))
    table = ok(triggerd("get", "bc", "-n", ns, server=server)).splitlines()
    assert table[0].split() == ["NAME", "TYPE", "FROM", "LATEST"]
    assert table[1].split() == ["web", "Docker", "Git", "0"]
    assert ok(triggerd("start-build", "web", "-n", ns, server=server)) == "build/web-1 started\n"
    wait_for(lambda: phase(server, ns, "web-1") in FAILED, timeout=30, what="web-1 failed")
    table = ok(triggerd("get", "builds", "-n", ns, server=server)).splitlines()
    assert table[0].split() == ["NAME", "TYPE", "FROM", "STATUS", "STARTED", "DURATION"]
    assert table[1].startswith("web-1")
    assert re.search(r"(Failed|Error) \(\w+\)", table[1]), table[1]
    as_yaml = yaml.safe_load(ok(triggerd("get", "builds", "-n", ns, "-o", "yaml", server=server)))
    assert as_yaml["kind"] == "BuildList"
    assert [b["metadata"]["name"] for b in as_yaml["items"]] == ["web-1"]
    selected = ok(triggerd("get", "builds", "-n", ns, "-l", "buildconfig=other", server=server))
    assert selected == ""


def test_start_build_follow_exit_codes(server: Server, tmp_path: Path, closed_port: int) -> None:
    ns = "follow"
    write_buildconfig(tmp_path, "broken", port=closed_port, namespace=ns)
    ok(triggerd("apply", "-f", str(tmp_path), server=server))
    result = triggerd(
        "start-build",
        "broken",
        "-n",
        ns,
        "--follow",
        "--env",
        "A=1",
        "--build-arg",
        "B=2",
        server=server,
    )
    assert result.code == 1, result
    assert result.out.startswith("build/broken-1 started\n")
    assert re.match(r"build/broken-1 (Failed|Error)", result.err), result.err
    logs = ok(triggerd("logs", "broken-1", "-n", ns, server=server))
    assert logs in result.out  # the followed log is the stored log
    build = json.loads(
        ok(triggerd("get", "build", "broken-1", "-n", ns, "-o", "json", server=server))
    )
    docker = build["spec"]["strategy"]["dockerStrategy"]
    assert {"name": "A", "value": "1"} in docker["env"]
    assert {"name": "B", "value": "2"} in docker["buildArgs"]


def test_cancel_queued_and_running_builds(server: Server, tmp_path: Path, black_hole: int) -> None:
    ns = "cancel"
    write_buildconfig(tmp_path, "slow", port=black_hole, namespace=ns)
    ok(triggerd("apply", "-f", str(tmp_path), server=server))
    ok(triggerd("start-build", "slow", "-n", ns, "--commit", "abc1234", server=server))
    ok(triggerd("start-build", "slow", "-n", ns, server=server))
    wait_for(lambda: phase(server, ns, "slow-1") == "Running", timeout=30, what="slow-1 running")
    assert phase(server, ns, "slow-2") == "New"  # Serial: queued behind slow-1
    out = ok(triggerd("cancel-build", "slow-2", "-n", ns, server=server))
    assert out == "build/slow-2 cancelled\n"
    assert phase(server, ns, "slow-2") == "Cancelled"
    ok(triggerd("cancel-build", "build/slow-1", "-n", ns, server=server))
    wait_for(lambda: phase(server, ns, "slow-1") == "Cancelled", timeout=30, what="slow-1 ends")
    # Following a cancelled build ends at once with exit 0 for `logs -f`.
    ok(triggerd("logs", "slow-1", "-f", "-n", ns, server=server))
    # Cancelling a cancelled build again is harmless, as with oc.
    ok(triggerd("cancel-build", "slow-1", "-n", ns, server=server))


def test_follow_of_a_cancelled_build_exits_1(
    server: Server, tmp_path: Path, black_hole: int
) -> None:
    ns = "follow-cancel"
    write_buildconfig(tmp_path, "hang", port=black_hole, namespace=ns)
    ok(triggerd("apply", "-f", str(tmp_path), server=server))
    follower = subprocess.Popen(
        [sys.executable, "-m", "triggerd", "start-build", "hang", "-n", ns, "-F"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env({"TRIGGERD_SERVER": server.url, "TRIGGERD_DATA_DIR": str(server.data_dir)}),
    )
    try:
        wait_for(lambda: phase(server, ns, "hang-1") == "Running", timeout=30, what="hang-1 runs")
        ok(triggerd("cancel-build", "hang-1", "-n", ns, server=server))
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 1, (out, err)
    assert "build/hang-1 Cancelled" in err


def test_cancel_of_a_finished_build_exits_2(
    server: Server, tmp_path: Path, closed_port: int
) -> None:
    ns = "cancel-done"
    write_buildconfig(tmp_path, "quick", port=closed_port, namespace=ns)
    ok(triggerd("apply", "-f", str(tmp_path), server=server))
    ok(triggerd("start-build", "quick", "-n", ns, server=server))
    wait_for(lambda: phase(server, ns, "quick-1") in FAILED, timeout=30, what="quick-1 failed")
    result = triggerd("cancel-build", "quick-1", "-n", ns, server=server)
    assert result.code == 2
    assert result.err.startswith("error: ") and "already finished" in result.err


def test_api_errors_exit_2_with_the_status_message(server: Server) -> None:
    result = triggerd("get", "bc", "nope", server=server)
    assert result.code == 2
    assert result.err == 'error: BuildConfig "nope" not found\n'
    result = triggerd("start-build", "nope", server=server)
    assert result.code == 2
    assert 'BuildConfig "nope" not found' in result.err
    result = triggerd("get", "builds", "-n", "Bad_NS", server=server)
    assert result.code == 2 and "Bad_NS" in result.err


def test_tokens(server: Server) -> None:
    result = triggerd("get", "bc", server=server, env={"TRIGGERD_TOKEN": "wrong"})
    assert result.code == 2
    assert result.err == "error: invalid token\n"
    assert "wrong" not in result.err.replace("error: invalid token", "")
    result = triggerd("get", "bc", "--server", server.url, "--data-dir", "/nonexistent")
    assert result.code == 2
    assert "bearer token is required" in result.err
    out = ok(triggerd("get", "bc", "--server", server.url, "--token", server.token))
    assert out == ""


def test_unreachable_server_exits_2() -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    result = triggerd("get", "builds", "--server", url, "--token", "x")
    assert result.code == 2
    assert result.err.startswith(f"error: cannot reach triggerd at {url}: ")


@pytest.mark.parametrize(
    "args",
    [
        ("get",),
        ("get", "pods"),
        ("start-build", "app", "--env", "NOEQUALS"),
        ("logs",),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(list(args))
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_python_dash_m_reports_usage_errors() -> None:
    result = triggerd("start-build")
    assert result.code == 2
    assert "usage: triggerd start-build" in result.err
