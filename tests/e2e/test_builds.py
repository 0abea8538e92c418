"""End to end: a real triggerd process, real git, buildah and registry, driven over REST.

These are the issue's acceptance scenarios: a build from git lands in the registry with the
digest the Build records, a rebuild reuses layers, failures end in the right phase and
reason, cancel stops every process, a crash leaves no build stuck, and the run policy holds.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.server import API, TriggerdServer, elapsed
from tests.support.gitrepo import GitRepo, GitRepoFactory
from tests.support.processes import wait_for
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

SLOW_STEP_SECONDS = 3


def dockerfile(base_image: str, *, run: str = "echo built > /built.txt") -> str:
    return (
        f"FROM {base_image}\n"
        "ARG GREETING=hi\n"
        f"RUN {run}\n"
        "COPY app.txt /app.txt\n"
        'CMD ["cat", "/app.txt"]\n'
    )


def config(name: str, uri: str, image: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": name},
        "spec": {
            "source": {"git": {"uri": uri, "ref": "main"}},
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {"to": {"kind": "DockerImage", "name": image}},
            **spec,
        },
    }


def buildah_processes(server: TriggerdServer) -> list[str]:
    """The buildah processes of ``server``'s builds, helpers (buildah-copier) included.

    Scoped to the server: the runner starts each command in a session of its own, so a
    process belongs to the server when its session leader's arguments name the server's
    directory. Other tests' leftovers (and anything else on the machine) don't count.
    """
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid,sid,args"], capture_output=True, text=True
    ).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    rows = [row for row in rows if len(row) == 3]
    args_of = {pid: args for pid, _, args in rows}
    root = str(server.data_dir)
    return [
        f"{pid} {args}"
        for pid, sid, args in rows
        if args.startswith("buildah") and root in args_of.get(sid, "") + " " + args
    ]


def start_sleeping_build(
    server: TriggerdServer,
    registry: Registry,
    git_repo_factory: GitRepoFactory,
    base_image: str,
    name: str,
) -> tuple[GitRepo, str]:
    """A build whose RUN step sleeps for minutes, returned once that step runs."""
    repo = git_repo_factory(
        f"e2e-{name}",
        {
            "Dockerfile": dockerfile(base_image, run="echo sleeping && sleep 300"),
            "app.txt": "x\n",
        },
    )
    server.apply(config(name, repo.git_url, registry.ref(f"e2e/{name}")))
    build = server.start_build(name)
    server.wait_build(build, until=lambda b: "sleeping" in server.log(build), timeout=60)
    return repo, build


def test_build_from_git_lands_in_registry_and_rebuild_uses_cache(
    triggerd: TriggerdServer,
    registry: Registry,
    git_repo_factory: GitRepoFactory,
    base_image: str,
) -> None:
    repo = git_repo_factory(
        "e2e-app",
        {
            "Dockerfile": dockerfile(base_image, run=f"sleep {SLOW_STEP_SECONDS} && echo slow"),
            "app.txt": "v1\n",
        },
    )
    image = registry.ref("e2e/app", "v1")
    triggerd.apply(config("app", repo.git_url, image))

    first = triggerd.wait_build(triggerd.start_build("app"))
    assert first["status"]["phase"] == "Complete", first["status"]
    digest = first["status"]["output"]["to"]["imageDigest"]
    assert digest.startswith("sha256:")
    assert registry.head_digest("e2e/app", "v1") == digest
    assert first["status"]["outputDockerImageReference"] == image
    assert first["spec"]["revision"]["git"]["commit"] == repo.rev_parse("main")
    stages = [s["name"] for s in first["status"]["stages"]]
    assert stages[0] == "FetchInputs" and stages[-1] == "PushImage" and "Build" in stages
    log = triggerd.log("app-1")
    assert "STEP 1/" in log and "slow" in log

    second = triggerd.wait_build(triggerd.start_build("app"))
    assert second["status"]["phase"] == "Complete", second["status"]
    # io.openshift.build.name differs per build (as in OpenShift), so the digest does too.
    second_digest = second["status"]["output"]["to"]["imageDigest"]
    assert registry.head_digest("e2e/app", "v1") == second_digest
    assert "Using cache" in triggerd.log("app-2")
    cold, warm = elapsed(first), elapsed(second)
    print(f"cold build {cold:.2f}s, warm rebuild {warm:.2f}s")
    assert cold >= SLOW_STEP_SECONDS
    assert warm < cold - SLOW_STEP_SECONDS + 1.0


def test_failing_dockerfile_and_unreachable_git(
    triggerd: TriggerdServer,
    registry: Registry,
    git_repo_factory: GitRepoFactory,
    base_image: str,
) -> None:
    repo = git_repo_factory(
        "e2e-broken",
        {
            "Dockerfile": dockerfile(base_image, run="echo about to fail && exit 7"),
            "app.txt": "x\n",
        },
    )
    triggerd.apply(config("broken", repo.git_url, registry.ref("e2e/broken")))
    triggerd.apply(config("nogit", "git://127.0.0.1:1/missing.git", registry.ref("e2e/nogit")))
    broken = triggerd.wait_build(triggerd.start_build("broken"))
    assert broken["status"]["phase"] == "Failed"
    assert broken["status"]["reason"] == "DockerBuildFailed"
    assert "about to fail" in broken["status"]["logSnippet"]
    nogit = triggerd.wait_build(triggerd.start_build("nogit"))
    assert nogit["status"]["phase"] == "Failed"
    assert nogit["status"]["reason"] == "FetchSourceFailed"
    assert nogit["status"]["logSnippet"]


def test_push_refused_by_registry_credentials(
    triggerd_factory: ServerFactory,
    registry_factory: Any,
    git_repo_factory: GitRepoFactory,
    base_image: str,
    tmp_path: Any,
) -> None:
    locked = registry_factory(htpasswd={"builder": "right-password"})
    auth = tmp_path / "wrong-auth.json"
    import base64
    import json

    token = base64.b64encode(b"builder:wrong-password").decode()
    auth.write_text(json.dumps({"auths": {locked.host: {"auth": token}}}))
    server = triggerd_factory(
        {
            "registries": {
                locked.host: {"insecure": True},
                base_image.split("/")[0]: {"insecure": True},
            },
            "secrets": {"locked-push": {"path": str(auth)}},
        }
    )
    repo = git_repo_factory("e2e-locked", {"Dockerfile": dockerfile(base_image), "app.txt": "x\n"})
    doc = config("locked", repo.git_url, f"{locked.host}/e2e/locked:latest")
    doc["spec"]["output"]["pushSecret"] = {"name": "locked-push"}
    server.apply(doc)
    build = server.wait_build(server.start_build("locked"))
    assert build["status"]["phase"] == "Failed", build["status"]
    assert build["status"]["reason"] == "PushImageToRegistryFailed"
    assert "wrong-password" not in server.log("locked-1")


def test_cancel_running_build_stops_every_process(
    triggerd: TriggerdServer,
    registry: Registry,
    git_repo_factory: GitRepoFactory,
    base_image: str,
) -> None:
    _, name = start_sleeping_build(triggerd, registry, git_repo_factory, base_image, "sleepy")
    started = time.monotonic()
    status, _ = triggerd.request(
        "PATCH",
        f"{API}/builds/{name}",
        {"status": {"cancelled": True}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    build = triggerd.wait_build(name, timeout=10)
    assert build["status"]["phase"] == "Cancelled"
    assert build["status"]["reason"] == "CancelledBuild"
    assert time.monotonic() - started < 5
    wait_for(lambda: not buildah_processes(triggerd), timeout=5, what="buildah processes to end")


def test_deadline_fails_the_build(
    triggerd: TriggerdServer,
    registry: Registry,
    git_repo_factory: GitRepoFactory,
    base_image: str,
) -> None:
    repo = git_repo_factory(
        "e2e-deadline",
        {
            "Dockerfile": dockerfile(base_image, run="sleep 300"),
            "app.txt": "x\n",
        },
    )
    triggerd.apply(
        config("late", repo.git_url, registry.ref("e2e/late"), completionDeadlineSeconds=4)
    )
    build = triggerd.wait_build(triggerd.start_build("late"), timeout=60)
    assert build["status"]["phase"] == "Failed"
    assert build["status"]["reason"] == "ExceededRetryTimeout"
    wait_for(lambda: not buildah_processes(triggerd), timeout=5, what="buildah processes to end")


def test_crash_during_build_ends_it_as_error_and_new_builds_run(
    triggerd: TriggerdServer,
    registry: Registry,
    git_repo_factory: GitRepoFactory,
    base_image: str,
) -> None:
    repo, name = start_sleeping_build(triggerd, registry, git_repo_factory, base_image, "crashy")
    assert buildah_processes(triggerd)
    triggerd.kill()
    triggerd.start()
    # Whatever of the build outlived the crash, the restarted server kills the process group
    # it recorded for the build.
    wait_for(lambda: not buildah_processes(triggerd), timeout=10, what="orphaned buildah to die")
    build = triggerd.build(name)
    assert build["status"]["phase"] == "Error"
    assert "stopped while this build was running" in build["status"]["message"]
    # The config still works: replace the Dockerfile with a quick one and build again.
    repo.commit({"Dockerfile": dockerfile(base_image)}, message="quick")
    again = triggerd.wait_build(triggerd.start_build("crashy"))
    assert again["status"]["phase"] == "Complete", again["status"]


def test_serial_policy_runs_builds_one_after_another(
    triggerd_factory: ServerFactory,
    registry: Registry,
    git_repo_factory: GitRepoFactory,
    base_image: str,
) -> None:
    server = triggerd_factory({"maxConcurrentBuilds": 4})
    repo = git_repo_factory(
        "e2e-serial",
        {
            "Dockerfile": dockerfile(base_image, run="sleep 1"),
            "app.txt": "x\n",
        },
    )
    server.apply(config("serial", repo.git_url, registry.ref("e2e/serial"), runPolicy="Serial"))
    names = [
        server.start_build("serial", {"dockerStrategyOptions": {"noCache": True}}) for _ in range(2)
    ]
    first, second = (server.wait_build(n) for n in names)
    assert first["status"]["phase"] == second["status"]["phase"] == "Complete"
    assert first["metadata"]["labels"]["openshift.io/build.start-policy"] == "Serial"
    assert second["status"]["startTimestamp"] >= first["status"]["completionTimestamp"]
