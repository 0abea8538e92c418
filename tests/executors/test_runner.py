"""triggerd.runner: plan actions, stop semantics, and ``python -m triggerd.runner``.

The first tests drive :class:`PlanRun` with small hand-written plans (plain commands such
as ``sh`` and ``sleep``) to pin down the step semantics both executors share; the last ones
run a rendered buildah plan through the command line the Kubernetes Job uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.executors.conftest import ExecutorEnv, RecordingReporter, make_build, processes
from tests.support.gitrepo import GitRepoFactory
from tests.support.ports import free_port
from triggerd import runner
from triggerd.executors.base import Cancelled, Failed, Succeeded
from triggerd.model.builds import Reason, StageName
from triggerd.planning import buildah
from triggerd.planning.plan import (
    Captured,
    CheckInside,
    Command,
    CopyInto,
    EditDockerfile,
    InWorkspace,
    MakeDirectory,
    MergeAuthFiles,
    OutputName,
    Plan,
    ReadOutput,
    Step,
    WriteFile,
)

REPO_ROOT = Path(__file__).parents[2]


def step(action: object, stage: StageName = StageName.BUILD) -> Step:
    return Step(stage=stage, reason=Reason.GENERIC_BUILD_FAILED, action=action)  # type: ignore[arg-type]


async def run_plan(
    plan: Plan, workspace: Path, **kwargs: object
) -> tuple[runner.RunResult, str, RecordingReporter]:
    lines: list[bytes] = []
    reporter = RecordingReporter()
    run = runner.PlanRun(plan, workspace, emit=lines.append, listener=reporter)
    result = await run.run()
    return result, b"".join(lines).decode(), reporter


async def test_steps_outputs_and_stages(tmp_path: Path) -> None:
    plan = Plan(
        steps=(
            step(MakeDirectory(path="out"), StageName.FETCH_INPUTS),
            step(
                Command(
                    argv=("sh", "-c", 'printf "%s" "$0" > out/value; echo to-the-log', "v1"),
                    env={"WHERE": InWorkspace(path="out")},
                ),
                StageName.FETCH_INPUTS,
            ),
            step(ReadOutput(path="out/value", output=OutputName.DIGEST)),
            step(Command(argv=("echo", Captured(output=OutputName.DIGEST, prefix="got="))),
                 StageName.PUSH_IMAGE),
        ),
    )  # fmt: skip
    result, log, reporter = await run_plan(plan, tmp_path)
    assert result.succeeded
    assert result.outputs == {OutputName.DIGEST: "v1"}
    assert "to-the-log\n" in log
    assert "--> PushImage: echo got=v1\ngot=v1\n" in log
    assert reporter.events == ["running", "stage:FetchInputs", "stage:Build", "stage:PushImage"]


async def test_failure_stops_the_plan_with_the_step_reason(tmp_path: Path) -> None:
    plan = Plan(
        steps=(
            Step(
                stage=StageName.FETCH_INPUTS,
                reason=Reason.FETCH_SOURCE_FAILED,
                action=Command(argv=("sh", "-c", "echo oops >&2; exit 3")),
            ),
            step(Command(argv=("echo", "never"))),
        )
    )
    result, log, _ = await run_plan(plan, tmp_path)
    assert result.failure is not None
    assert result.failure.step.reason is Reason.FETCH_SOURCE_FAILED
    assert result.failure.message == "sh exited with status 3"
    assert "never" not in log.replace("echo never", "")
    assert "oops" in result.snippet
    outcome = runner.to_outcome(plan, result)
    assert outcome == Failed(
        reason=Reason.FETCH_SOURCE_FAILED,
        message="Failed to fetch the input source. sh exited with status 3.",
        log_snippet=result.snippet,
    )


async def test_missing_program(tmp_path: Path) -> None:
    result, _, _ = await run_plan(
        Plan(steps=(step(Command(argv=("no-such-program-xyz",))),)), tmp_path
    )
    assert result.failure is not None
    assert result.failure.message == "no-such-program-xyz is not installed"


async def test_environment_is_filtered(tmp_path: Path) -> None:
    lines: list[bytes] = []
    run = runner.PlanRun(
        Plan(steps=(step(Command(argv=("env",), env={"ADDED": "1"})),)),
        tmp_path,
        emit=lines.append,
        environ={"PATH": os.environ["PATH"], "TRIGGERD_API_TOKENS": "secret", "LC_ALL": "C"},
    )
    await run.run()
    log = b"".join(lines).decode()
    assert "ADDED=1" in log and "LC_ALL=C" in log
    assert "TRIGGERD_API_TOKENS" not in log


async def test_credentials_in_output_are_redacted(tmp_path: Path) -> None:
    plan = Plan(steps=(step(Command(argv=("echo", "fatal: https://bot:tok3n@host/x.git"))),))
    _, log, _ = await run_plan(plan, tmp_path)
    assert "tok3n" not in log
    assert "https://***@host/x.git" in log


async def test_file_builtins_refuse_symlinks_out_of_the_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Dockerfile").write_text("FROM a\n")
    workspace = tmp_path / "ws"
    (workspace / "source").mkdir(parents=True)
    (workspace / "source" / "link").symlink_to(outside)
    (workspace / "source" / "Dockerfile").symlink_to(outside / "Dockerfile")

    cases: list[tuple[object, str]] = [
        (WriteFile(path="source/link/x", content="y"), "points outside the workspace"),
        (MakeDirectory(path="source/link/sub"), "points outside the workspace"),
        (
            EditDockerfile(path="source/Dockerfile", output="Dockerfile", from_image="b"),
            "points outside the workspace",
        ),
        (CheckInside(root="source", paths=("source/link",)), "link points outside the source"),
        (CheckInside(root="source", paths=("source/gone",)), "gone does not exist"),
    ]
    for action, message in cases:
        result, _, _ = await run_plan(Plan(steps=(step(action),)), workspace)
        assert result.failure is not None, action
        assert message in result.failure.message, (action, result.failure.message)
    assert not (outside / "x").exists()
    assert (outside / "Dockerfile").read_text() == "FROM a\n"

    # Writing over a committed symlink replaces the link, not what it points to.
    result, _, _ = await run_plan(
        Plan(steps=(step(WriteFile(path="source/Dockerfile", content="FROM z\n")),)), workspace
    )
    assert result.succeeded
    assert not (workspace / "source" / "Dockerfile").is_symlink()
    assert (outside / "Dockerfile").read_text() == "FROM a\n"


async def test_edit_dockerfile_writes_outside_the_context(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "Dockerfile").write_text("FROM a AS x\nFROM b\nRUN y\n")
    plan = Plan(
        steps=(
            step(
                EditDockerfile(
                    path="source/Dockerfile",
                    output="Dockerfile",
                    from_image="c",
                    env=(("E", "1"),),
                    labels=(("id", Captured(output=OutputName.COMMIT)),),
                )
            ),
        )
    )
    lines: list[bytes] = []
    run = runner.PlanRun(plan, tmp_path, emit=lines.append)
    run._outputs[OutputName.COMMIT] = "abc"
    assert (await run.run()).succeeded
    assert (tmp_path / "source" / "Dockerfile").read_text() == "FROM a AS x\nFROM b\nRUN y\n"
    assert (tmp_path / "Dockerfile").read_text() == (
        'FROM a AS x\nENV E="1"\nFROM c\nENV E="1"\nRUN y\nLABEL "id"="abc"\n'
    )


async def test_stop_kills_the_process_group(tmp_path: Path) -> None:
    # A shell that ignores SIGTERM, with a child: both must go (SIGKILL after the grace).
    script = "trap '' TERM; sleep 71 & sleep 72; wait"
    lines: list[bytes] = []
    run = runner.PlanRun(
        Plan(steps=(step(Command(argv=("sh", "-c", script))),)),
        tmp_path,
        emit=lines.append,
        kill_grace=0.5,
    )
    task = asyncio.create_task(run.run())
    deadline = time.monotonic() + 10
    while not any(cmd == "sleep 71" for _, cmd in processes().values()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    started = time.monotonic()
    await run.stop()
    result = await task
    assert time.monotonic() - started < 3
    assert result.stopped is runner.StopCause.CANCELLED
    assert runner.to_outcome(run.plan, result) == Cancelled()
    assert not any(cmd in ("sleep 71", "sleep 72") for _, cmd in processes().values())


async def test_stop_before_run_runs_nothing(tmp_path: Path) -> None:
    lines: list[bytes] = []
    run = runner.PlanRun(
        Plan(steps=(step(Command(argv=("touch", "made"))),)), tmp_path, emit=lines.append
    )
    await run.stop()
    result = await run.run()
    assert result.stopped is runner.StopCause.CANCELLED
    assert not (tmp_path / "made").exists()


async def test_deadline(tmp_path: Path) -> None:
    plan = Plan(steps=(step(Command(argv=("sleep", "73"))),), deadline_seconds=1)
    started = time.monotonic()
    result, log, _ = await run_plan(plan, tmp_path)
    assert 1 <= time.monotonic() - started < 5
    assert result.stopped is runner.StopCause.DEADLINE
    outcome = runner.to_outcome(plan, result)
    assert isinstance(outcome, Failed)
    assert outcome.reason is Reason.EXCEEDED_RETRY_TIMEOUT
    assert "--> Deadline of 1s exceeded; stopping the build" in log


def test_success_outcome_without_output() -> None:
    result = runner.RunResult(outputs={OutputName.DIGEST: "sha256:x"})
    assert runner.to_outcome(Plan(steps=()), result) == Succeeded(digest="", image_reference="")
    assert runner.to_outcome(Plan(steps=(), image="r/a:b"), result) == Succeeded(
        digest="sha256:x", image_reference="r/a:b"
    )


# The command line the Kubernetes Job runs -------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "triggerd.runner", *args,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def write_plan(env: ExecutorEnv, spec: dict[str, object], name: str) -> Path:
    ctx = buildah.PlanContext(
        root=str(env.storage.root),
        runroot=str(env.storage.runroot),
        insecure_registries=frozenset({env.registry.host}),
    )
    path = env.tmp / f"{name}.json"
    path.write_text(json.dumps(buildah.render(make_build(spec, name), ctx).to_dict()))
    return path


@pytest.mark.e2e
async def test_cli_builds_pushes_and_writes_results(
    env: ExecutorEnv, git_repo_factory: GitRepoFactory
) -> None:
    repo = git_repo_factory("cli", {"Dockerfile": f"FROM {env.base_image}\nRUN echo from-cli\n"})
    image = env.registry.ref("executor/cli", "v1")
    spec = {
        "source": {"git": {"uri": repo.file_url}},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
        "output": {"to": {"kind": "DockerImage", "name": image}},
    }
    workdir = env.tmp / "job"
    code, out = await run_cli(str(write_plan(env, spec, "cli-1")), str(workdir))
    assert code == 0, out
    # FROM, RUN and the labels: OpenShift's build ENV is no step (buildah --env).
    assert "from-cli" in out and "STEP 1/3" in out
    result = json.loads((workdir / "outputs" / "result.json").read_text())
    digest = env.registry.head_digest("executor/cli", "v1")
    assert result["succeeded"] is True
    assert result["outputs"]["image.digest"] == digest
    assert [s["name"] for s in result["stages"]] == ["FetchInputs", "Build", "PushImage"]
    revision = json.loads((workdir / "outputs" / "revision.json").read_text())
    assert revision["git"]["commit"] == repo.rev_parse("HEAD")


@pytest.mark.e2e
async def test_cli_failure_and_bad_plan(env: ExecutorEnv) -> None:
    spec = {
        "source": {"dockerfile": f"FROM {env.base_image}\nRUN exit 7\n"},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    result_file = env.tmp / "termination-log"
    code, out = await run_cli(
        str(write_plan(env, spec, "cli-2")), str(env.tmp / "job2"), "--result", str(result_file)
    )
    assert code == 1, out
    result = json.loads(result_file.read_text())
    assert result["reason"] == "DockerBuildFailed"
    assert "buildah build exited with status" in result["message"]

    bad = env.tmp / "bad.json"
    bad.write_text('{"version": 1, "steps": [{"action": {"kind": "shell"}}]}')
    code, out = await run_cli(str(bad), str(env.tmp / "job3"))
    assert code == 2
    assert "cannot load" in out


@pytest.mark.e2e
async def test_cli_sigterm_stops_the_build(env: ExecutorEnv) -> None:
    spec = {
        "source": {"dockerfile": f"FROM {env.base_image}\nRUN sleep 74\n"},
        "strategy": {"type": "Docker", "dockerStrategy": {}},
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "triggerd.runner", str(write_plan(env, spec, "cli-3")),
        str(env.tmp / "job4"),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(cmd == "sleep 74" for _, cmd in processes().values()):
        assert time.monotonic() < deadline and proc.returncode is None
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 3
    assert not any(cmd == "sleep 74" for _, cmd in processes().values())


def kubelet_volume(root: Path, files: dict[str, str]) -> Path:
    """A Secret/ConfigMap volume as the kubelet's atomic writer lays it out: the data in a
    timestamped directory, ``..data`` pointing at it, each key a symlink through ``..data``."""
    root.mkdir(parents=True)
    stamped = root / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir()
    for key, value in files.items():
        (stamped / key).write_text(value)
        (stamped / key).chmod(0o444)
    (root / "..data").symlink_to(stamped.name)
    for key in files:
        (root / key).symlink_to(f"..data/{key}")
    return root


async def test_copy_into_from_a_mounted_volume(tmp_path: Path) -> None:
    volume = kubelet_volume(tmp_path / "mnt" / "npmrc", {".npmrc": "token", "extra": "x"})
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the volume")
    (volume / "escape").symlink_to(outside)  # a key may not lead out of its volume
    workspace = tmp_path / "ws"
    workspace.mkdir()
    plan = Plan(
        steps=(
            step(MakeDirectory(path="source"), StageName.FETCH_INPUTS),
            step(
                CopyInto(source=str(volume), destination="source/creds", what='secret "npmrc"'),
                StageName.FETCH_INPUTS,
            ),
        )
    )
    result, log, _ = await run_plan(plan, workspace)
    assert result.failure is None, log
    creds = workspace / "source" / "creds"
    assert sorted(p.name for p in creds.iterdir()) == [".npmrc", "extra"]
    assert (creds / ".npmrc").read_text() == "token"
    assert not (creds / ".npmrc").is_symlink()
    assert (creds / ".npmrc").stat().st_mode & 0o777 == 0o644  # as the host's copies


async def test_script_locations_are_asked_script_by_script(tmp_path: Path) -> None:
    """S2I scripts over http(s): each script is asked for, a 404 means absent; a location
    that cannot be reached is given up at once (not once per script)."""
    served = {"assemble": b"#!/bin/sh\n", "run": b""}  # an empty body counts as absent

    async def serve(request: web.Request) -> web.Response:
        body = served.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/s2i/{name}", serve)
    site_runner = web.AppRunner(app)
    await site_runner.setup()
    port, closed = free_port(), free_port()
    await web.TCPSite(site_runner, "127.0.0.1", port).start()
    lines: list[bytes] = []
    try:
        run = runner.PlanRun(Plan(steps=()), tmp_path, emit=lines.append)
        up, down = f"http://127.0.0.1:{port}/s2i", f"http://127.0.0.1:{closed}/s2i"
        found = await run._probe_scripts((up, down))
    finally:
        await site_runner.cleanup()
    assert found == {up: frozenset({"assemble"}), down: frozenset()}
    log = b"".join(lines).decode()
    assert f"save-artifacts: not at {up}/save-artifacts (HTTP 404)" in log
    assert f"run: not at {up}/run (HTTP 200)" in log
    assert log.count(f"{down}: could not be fetched") == 1


@pytest.mark.parametrize(
    ("keys", "repository", "chosen"),
    [
        # docker login writes Docker Hub's legacy endpoint; references say docker.io
        (["https://index.docker.io/v1/"], "docker.io/acme/cache", 0),
        (["registry-1.docker.io"], "docker.io/acme/cache", 0),
        # the most specific key wins, as in containers/image
        (["cache.example.com", "cache.example.com/acme"], "cache.example.com/acme/app", 1),
        (["cache.example.com/acme", "cache.example.com"], "cache.example.com/acme/app", 0),
        (["cache.example.com/other"], "cache.example.com/acme/app", None),
        (["other.example.com"], "cache.example.com/acme/app", None),
        # a key naming a repository does not match its prefix-sharing neighbour
        (["cache.example.com/acme/app"], "cache.example.com/acme/application", None),
    ],
)
async def test_merged_auth_files_pick_the_registry_entry_for_the_cache(
    tmp_path: Path, keys: list[str], repository: str, chosen: int | None
) -> None:
    entries = {key: {"auth": f"credential-{i}"} for i, key in enumerate(keys)}
    (tmp_path / "push.json").write_text(json.dumps({"auths": entries}))
    (tmp_path / "pull.json").write_text(json.dumps({"auths": {"pull.example.com": {"auth": "p"}}}))
    merge = MergeAuthFiles(
        output="merged.json",
        files=(InWorkspace(path="pull.json"),),
        scoped=((InWorkspace(path="push.json"), repository),),
    )
    result, log, _ = await run_plan(Plan(steps=(step(merge),)), tmp_path)
    assert result.succeeded, log
    merged = json.loads((tmp_path / "merged.json").read_text())["auths"]
    assert merged["pull.example.com"] == {"auth": "p"}
    expected = None if chosen is None else {"auth": f"credential-{chosen}"}
    assert merged.get(repository) == expected
    assert (tmp_path / "merged.json").stat().st_mode & 0o777 == 0o600
