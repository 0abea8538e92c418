"""The ``triggerd`` command against a real server: output, messages and exit codes 0/1/2."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import tarfile
import termios
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


def binary_buildconfig(folder: Path, name: str, namespace: str) -> Path:
    """A binary BuildConfig whose builds fail at once, before buildah runs (the upload has no
    file at its dockerfilePath): the CLI tests are about uploads and builds started."""
    doc = {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"type": "Binary", "binary": {}},
            "strategy": {"type": "Docker",
                         "dockerStrategy": {"dockerfilePath": "no-such-Dockerfile"}},
            "output": {"to": {"kind": "DockerImage", "name": f"{LOOPBACK}:1/t/{name}:latest"}},
        },
    }  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_with_terminal(args: list[str], server: Server) -> tuple[int, str, str]:
    """``python -m triggerd ARGS`` with stderr on a pseudo-terminal (so the upload shows its
    tqdm progress bar, as for a user at a terminal): (exit code, stdout, terminal output)."""
    master, slave = os.openpty()
    # A terminal of 100 columns (a fresh pty has none, and tqdm then draws nothing).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "triggerd", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=python_env(
                {"TRIGGERD_SERVER": server.url, "TRIGGERD_DATA_DIR": str(server.data_dir)}
            ),
        )
    finally:
        os.close(slave)
    terminal = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError(f"no terminal output for 60 s: {terminal!r}")
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=60), out, terminal.decode(errors="replace")


def annotation(server: Server, namespace: str, build: str, key: str) -> str:
    doc = json.loads(ok(triggerd("get", "build", build, "-n", namespace, "-o", "json",
                                 server=server)))  # fmt: skip
    return str(doc["metadata"]["annotations"].get(key, ""))


def test_start_build_uploads_with_a_progress_bar_and_reruns_from_build(
    server: Server, tmp_path: Path
) -> None:
    ns = "binary"
    ok(triggerd("apply", "-f", str(binary_buildconfig(tmp_path, "upload", ns)), server=server))
    context = tmp_path / "ctx"
    (context / ".git").mkdir(parents=True)
    (context / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (context / "app.txt").write_text("x" * 300_000)
    code, out, terminal = run_with_terminal(
        ["start-build", "upload", "-n", ns, "--from-dir", str(context)], server
    )
    assert code == 0, (out, terminal)
    assert out == "build/upload-1 started\n"
    assert "Uploading" in terminal and "100%" in terminal, terminal
    digest = annotation(server, ns, "upload-1", "triggerd.dev/binary-input")
    assert digest.startswith("sha256:")

    # An archive, as prepared by the user, with --commit recorded as the revision.
    archive = tmp_path / "ctx.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(context / "app.txt", arcname="app.txt")
    code, out, terminal = run_with_terminal(
        ["start-build", "upload", "-n", ns, "--from-archive", str(archive)], server
    )
    assert code == 0 and out == "build/upload-2 started\n", (out, terminal)
    assert "Uploading" in terminal
    ok(triggerd("start-build", "upload", "-n", ns, "--from-dir", str(context),
                "--commit", "abc1234", server=server))  # fmt: skip
    build = json.loads(
        ok(triggerd("get", "build", "upload-3", "-n", ns, "-o", "json", server=server))
    )
    assert build["spec"]["revision"]["git"]["commit"] == "abc1234"

    # Options a binary build cannot take are refused, not dropped.
    for extra in (["--env", "A=1"], ["--build-arg", "B=2"]):
        result = triggerd("start-build", "upload", "-n", ns, "--from-dir", str(context),
                          *extra, server=server)  # fmt: skip
        assert result.code == 2, result
        assert "cannot be used with --from-dir" in result.err
    # Without an upload the binary BuildConfig cannot start at all.
    result = triggerd("start-build", "upload", "-n", ns, server=server)
    assert result.code == 2
    assert "cannot start a binary build without input" in result.err

    # --from-build: a new build like upload-1, with its upload, no new upload needed.
    wait_for(lambda: phase(server, ns, "upload-1") in FAILED, timeout=60, what="upload-1 ends")
    result = triggerd("start-build", "--from-build", "upload-1", "-n", ns, "--follow",
                      server=server)  # fmt: skip
    assert result.code == 1, result  # followed to its end: it fails (no Dockerfile)
    assert "no-such-Dockerfile does not exist" in result.out
    assert result.out.startswith("build/upload-4 started\n")
    assert annotation(server, ns, "upload-4", "triggerd.dev/binary-input") == digest
    assert annotation(server, ns, "upload-4", "openshift.io/build.clone-of") == "upload-1"
    assert "Uploading" not in result.err
    for bad in (["--from-build", "upload-1", "--commit", "abc1234"],
                ["--from-build", "upload-1", "--from-dir", str(context)],
                ["upload", "--from-build", "upload-1"]):  # fmt: skip
        result = triggerd("start-build", "-n", ns, *bad, server=server)
        assert result.code == 2 and "usage: triggerd start-build" in result.err, result
