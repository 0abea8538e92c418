"""The build pod's two plans run for real (git, buildah, registry) with the real runner.

The Job's init and build containers cannot run here (no cluster), so this runs exactly the
plans the Job carries — taken back out of the rendered Job's annotations — one after the
other on one workspace, as the pod would, with ``--result`` files standing in for the
termination logs. The checkout is handed to uid 1000 in between, as the non-root init
container leaves it; only buildah's storage paths differ from the pod's.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.executors.test_runner import kubelet_volume
from tests.strategies.conftest import custom_builder_image  # noqa: F401 (fixture)
from tests.support.gitrepo import GitRepoFactory
from tests.support.registry import Registry, RegistryFactory
from triggerd.executors.base import Failed, Succeeded
from triggerd.model import builds
from triggerd.planning import buildah, jobs

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """buildah storage standing in for the pod's emptyDir (shared by this module's builds)."""
    return tmp_path_factory.mktemp("pod-storage")


def run_plan(plan_json: str, plan_dir: Path, name: str, workspace: Path, result: Path) -> int:
    return run_plan_logged(plan_json, plan_dir, name, workspace, result)[0]


def run_plan_logged(
    plan_json: str, plan_dir: Path, name: str, workspace: Path, result: Path
) -> tuple[int, str]:
    """Run one container's plan as the pod does: (exit code, its log)."""
    path = plan_dir / name
    path.write_text(plan_json, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "triggerd.runner", str(path), str(workspace),
         "--result", str(result)],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "HOME": str(workspace.parent)},
        capture_output=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


def pod_status(fetch_exit: int, fetch_message: str, build_exit: int | None, build_message: str
               ) -> dict[str, object]:  # fmt: skip
    def terminated(name: str, code: int, message: str) -> dict[str, object]:
        return {"name": name, "state": {"terminated": {"exitCode": code, "message": message}}}

    status: dict[str, object] = {
        "initContainerStatuses": [terminated("fetch", fetch_exit, fetch_message)]
    }
    if build_exit is not None:
        status["containerStatuses"] = [terminated("build", build_exit, build_message)]
    return {"status": status}


def job_annotations(build: builds.Build, registry: Registry, storage: Path) -> dict[str, str]:
    """The pod's plan annotations of the Job for ``build``, with buildah storage under
    ``storage`` (the pod's emptyDir here)."""
    options = jobs.JobOptions(
        namespace="triggerd", image="unused", insecure_registries=frozenset({registry.host})
    )
    ctx = dataclasses.replace(
        jobs.plan_context(build, options),
        root=str(storage / "storage"),
        runroot=str(storage / "run"),
    )
    job = jobs.render_job(build, buildah.render(build, ctx), options)
    annotations: dict[str, str] = job["spec"]["template"]["metadata"]["annotations"]
    return annotations


@pytest.mark.parametrize("dockerfile_ok", [True, False], ids=["builds", "fails"])
def test_the_jobs_plans_build_and_push(
    tmp_path: Path,
    storage: Path,
    registry: Registry,
    base_image: str,
    git_repo_factory: GitRepoFactory,
    dockerfile_ok: bool,
) -> None:
    run_line = "RUN echo built > /built" if dockerfile_ok else "RUN false"
    repo = git_repo_factory(
        name="k8s-pod", files={"Dockerfile": f"FROM {base_image}\n{run_line}\n"}
    )
    image = registry.ref(f"k8s-pod-plan-{str(dockerfile_ok).lower()}", "latest")
    build = builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": "pod-1", "namespace": "triggerd", "uid": "u1"},
            "spec": {
                "source": {"type": "Git", "git": {"uri": repo.git_url, "ref": "main"}},
                "strategy": {"type": "Docker", "dockerStrategy": {}},
                "output": {"to": {"kind": "DockerImage", "name": image}},
            },
        }
    )
    annotations = job_annotations(build, registry, storage)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    fetch_result, build_result = tmp_path / "fetch-termination", tmp_path / "build-termination"

    fetch_exit = run_plan(annotations[jobs.FETCH_PLAN_ANNOTATION], tmp_path, "fetch.json",
                          workspace, fetch_result)  # fmt: skip
    assert fetch_exit == 0, fetch_result.read_text()
    for dirpath, dirnames, filenames in os.walk(workspace):  # the init container's user
        for entry in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            os.lchown(entry, 1000, 1000)
    build_exit = run_plan(annotations[jobs.BUILD_PLAN_ANNOTATION], tmp_path, "build.json",
                          workspace, build_result)  # fmt: skip

    view = jobs.read_pod(
        pod_status(fetch_exit, fetch_result.read_text(), build_exit, build_result.read_text()),
        image=image,
        deadline_seconds=600,
    )
    assert view.fetch_result is not None and view.fetch_result.revision is not None
    assert view.fetch_result.revision.commit == repo.rev_parse("main")
    if dockerfile_ok:
        assert build_exit == 0, build_result.read_text()
        assert isinstance(view.outcome, Succeeded)
        repository, _, tag = image.partition("/")[2].rpartition(":")
        assert view.outcome.digest == registry.head_digest(repository, tag)
        # the commit label came from the re-read in the build container (safe.directory)
        assert json.loads(build_result.read_text())["outputs"]["revision.commit"] == (
            view.fetch_result.revision.commit
        )
    else:
        assert isinstance(view.outcome, Failed)
        assert view.outcome.reason is builds.Reason.DOCKER_BUILD_FAILED


def test_the_jobs_plans_use_mounted_secrets_and_config_maps(
    tmp_path: Path,
    storage: Path,
    registry: Registry,
    base_image: str,
    git_repo_factory: GitRepoFactory,
) -> None:
    """source.secrets copied into the context by the init plan, a dockerStrategy volume
    mounted into RUN by the build plan — from volumes laid out as the kubelet writes them,
    at the Job's mount points moved under tmp_path (as the storage paths are)."""
    dockerfile = (
        f"FROM {base_image}\nCOPY creds/token /token\n"
        'RUN test "$(cat /etc/extra/ca.pem)" = pem-data && test "$(cat /token)" = t0ken\n'
    )
    repo = git_repo_factory(name="k8s-inputs", files={"Dockerfile": dockerfile})
    image = registry.ref("k8s-pod-inputs", "latest")
    build = builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": "inputs-1", "namespace": "triggerd", "uid": "u2"},
            "spec": {
                "source": {
                    "type": "Git",
                    "git": {"uri": repo.git_url, "ref": "main"},
                    "secrets": [{"secret": {"name": "npm"}, "destinationDir": "creds"}],
                },
                "strategy": {"type": "Docker", "dockerStrategy": {"volumes": [
                    {"name": "ca", "source": {"type": "ConfigMap", "configMap": {"name": "ca"}},
                     "mounts": [{"destinationPath": "/etc/extra"}]},
                ]}},
                "output": {"to": {"kind": "DockerImage", "name": image}},
            },
        }
    )  # fmt: skip
    annotations = job_annotations(build, registry, storage)
    mounts = tmp_path / "mounts"
    kubelet_volume(mounts / "secrets" / "npm", {"token": "t0ken"})
    kubelet_volume(mounts / "configmaps" / "ca", {"ca.pem": "pem-data"})

    def relocated(plan_json: str) -> str:
        return plan_json.replace(jobs.INPUT_SECRETS_DIR, str(mounts / "secrets")).replace(
            jobs.INPUT_CONFIG_MAPS_DIR, str(mounts / "configmaps")
        )

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    fetch_result, build_result = tmp_path / "fetch-termination", tmp_path / "build-termination"
    fetch_exit = run_plan(relocated(annotations[jobs.FETCH_PLAN_ANNOTATION]), tmp_path,
                          "fetch.json", workspace, fetch_result)  # fmt: skip
    assert fetch_exit == 0, fetch_result.read_text()
    assert (workspace / "source" / "creds" / "token").read_text() == "t0ken"
    build_exit = run_plan(relocated(annotations[jobs.BUILD_PLAN_ANNOTATION]), tmp_path,
                          "build.json", workspace, build_result)  # fmt: skip
    assert build_exit == 0, build_result.read_text()


def test_the_layer_cache_is_pushed_with_the_push_secret_beside_a_pull_secret(
    tmp_path: Path,
    storage: Path,
    registry: Registry,
    base_image: str,
    registry_factory: RegistryFactory,
    git_repo_factory: GitRepoFactory,
) -> None:
    """The base image is in a registry only the pull secret opens, the output and its
    layer cache in one only the push secret opens: buildah build (one --authfile for
    both) pulls with the one and pushes the cache with the other — the cache repository
    has the cache afterwards, which a cache push with the pull credentials never makes
    (buildah would then build again without the cache, and succeed all the same). The
    merge is the plan's MergeAuthFiles step, run by the real runner as on the host."""
    private = registry_factory(htpasswd={"puller": "correct-horse"})
    target = registry_factory(htpasswd={"pusher": "battery-staple"})
    base = private.ref("base/busybox", "latest")
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
         "--dest-creds", "puller:correct-horse", f"docker://{base_image}", f"docker://{base}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    repo = git_repo_factory(
        name="k8s-cache", files={"Dockerfile": f"FROM {base}\nRUN echo cached > /cached\n"}
    )
    image = target.ref("team/app", "v1")
    build = builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": "cached-1", "namespace": "triggerd", "uid": "u3",
                         "labels": {builds.CONFIG_LABEL: "cached"}},
            "spec": {
                "source": {"type": "Git", "git": {"uri": repo.git_url, "ref": "main"}},
                "strategy": {"type": "Docker",
                             "dockerStrategy": {"pullSecret": {"name": "pull"}}},
                "output": {"to": {"kind": "DockerImage", "name": image},
                           "pushSecret": {"name": "push"}},
            },
        }
    )  # fmt: skip
    options = jobs.JobOptions(
        namespace="triggerd",
        image="unused",
        insecure_registries=frozenset({registry.host, private.host, target.host}),
        layer_cache_registry=f"{target.host}/cache",
    )
    ctx = dataclasses.replace(
        jobs.plan_context(build, options),
        root=str(storage / "storage"),
        runroot=str(storage / "run"),
    )
    job = jobs.render_job(build, buildah.render(build, ctx), options)
    annotations = job["spec"]["template"]["metadata"]["annotations"]

    def auth(host: str, user: str, password: str) -> str:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return json.dumps({"auths": {host: {"auth": token}}})

    # The Secret volumes as the kubelet lays them out, moved under tmp_path.
    push_dir, pull_dir = tmp_path / "push", tmp_path / "pull"
    kubelet_volume(push_dir, {jobs.AUTH_FILE: auth(target.host, "pusher", "battery-staple")})
    kubelet_volume(pull_dir, {jobs.AUTH_FILE: auth(private.host, "puller", "correct-horse")})

    def relocated(plan_json: str) -> str:
        return plan_json.replace(jobs.PUSH_SECRET_DIR, str(push_dir)).replace(
            jobs.PULL_SECRET_DIR, str(pull_dir)
        )

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    fetch_result, build_result = tmp_path / "fetch-termination", tmp_path / "build-termination"
    fetch_exit = run_plan(relocated(annotations[jobs.FETCH_PLAN_ANNOTATION]), tmp_path,
                          "fetch.json", workspace, fetch_result)  # fmt: skip
    assert fetch_exit == 0, fetch_result.read_text()
    build_exit = run_plan(relocated(annotations[jobs.BUILD_PLAN_ANNOTATION]), tmp_path,
                          "build.json", workspace, build_result)  # fmt: skip
    assert build_exit == 0, build_result.read_text()
    assert (workspace / buildah.BUILD_AUTH_FILE).stat().st_mode & 0o777 == 0o600
    assert target.head_digest("team/app", "v1") is not None
    tags = target.request("GET", "/v2/cache/triggerd/cached/tags/list")
    assert tags.status == 200, tags.body
    assert json.loads(tags.body)["tags"], "the layer cache was not pushed"


def test_a_custom_builds_job_pulls_its_builder_with_the_pull_secret_and_mounts_the_source_secret(
    tmp_path: Path,
    storage: Path,
    registry: Registry,
    registry_factory: RegistryFactory,
    custom_builder_image: str,  # noqa: F811 (the fixture imported above)
) -> None:
    """customStrategy.pullSecret opens the registry the builder image is in, and the
    builder finds the source secret at SOURCE_SECRET_PATH: the Job's plans, run for real
    from the Secret volumes as the kubelet lays them out (before, the source secret was
    never given to a Job's custom builder and the builder image was pulled anonymously)."""
    private = registry_factory(htpasswd={"puller": "correct-horse"})
    builder = private.ref("builders/custom", "v1")
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
         "--dest-creds", "puller:correct-horse", f"docker://{custom_builder_image}",
         f"docker://{builder}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    password = "git-pa55word-for-the-job"
    output = registry.ref("k8s-custom", "v1")
    build = builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {"name": "custom-1", "namespace": "triggerd", "uid": "u4"},
            "spec": {
                "source": {"type": "Git", "git": {"uri": "https://git.example.com/app.git",
                                                  "ref": "dev"},
                           "sourceSecret": {"name": "git-basic"}},
                "strategy": {"type": "Custom", "customStrategy": {
                    "from": {"kind": "DockerImage", "name": builder},
                    "pullSecret": {"name": "builder-pull"},
                }},
                "output": {"to": {"kind": "DockerImage", "name": output}},
            },
        }
    )  # fmt: skip
    options = jobs.JobOptions(
        namespace="triggerd",
        image="unused",
        insecure_registries=frozenset({registry.host, private.host}),
    )
    ctx = dataclasses.replace(
        jobs.plan_context(build, options),
        root=str(storage / "storage"),
        runroot=str(storage / "run"),
    )
    job = jobs.render_job(build, buildah.render(build, ctx), options)
    annotations = job["spec"]["template"]["metadata"]["annotations"]
    token = base64.b64encode(b"puller:correct-horse").decode()
    pull_dir, secrets = tmp_path / "pull", tmp_path / "secrets"
    kubelet_volume(
        pull_dir, {jobs.AUTH_FILE: json.dumps({"auths": {private.host: {"auth": token}}})}
    )
    kubelet_volume(secrets / "git-basic", {"username": "bot", "password": password})

    def relocated(plan_json: str) -> str:
        return plan_json.replace(jobs.PULL_SECRET_DIR, str(pull_dir)).replace(
            jobs.INPUT_SECRETS_DIR, str(secrets)
        )

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    fetch_result, build_result = tmp_path / "fetch-termination", tmp_path / "build-termination"
    fetch_exit = run_plan(relocated(annotations[jobs.FETCH_PLAN_ANNOTATION]), tmp_path,
                          "fetch.json", workspace, fetch_result)  # fmt: skip
    assert fetch_exit == 0, fetch_result.read_text()
    build_exit, log = run_plan_logged(relocated(annotations[jobs.BUILD_PLAN_ANNOTATION]),
                                      tmp_path, "build.json", workspace, build_result)  # fmt: skip
    assert build_exit == 0, log + build_result.read_text()
    digest = hashlib.sha256(password.encode()).hexdigest()
    source_dir = buildah.SOURCE_SECRET_DIR
    assert f"custom: SOURCE_SECRET_PATH={source_dir}\n" in log
    assert f"custom: read {source_dir}/password sha256={digest}" in log
    assert password not in log
    assert f"custom: pushed {output}" in log
