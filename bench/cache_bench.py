"""Layer cache benchmark: how much the host layer cache and the registry layer cache save.

Run: ``python bench/cache_bench.py [--step-seconds 3] [--steps 3]``. Needs buildah, git
and the CNCF registry (``docker-registry``), as the test suite does.

Starts, in temporary directories, a registry on 127.0.0.1 and a bare git repository, and
publishes the tests' busybox base image (FROM scratch + static busybox). The repository's
Dockerfile has ``--steps`` RUN steps that each sleep ``--step-seconds``, then a last COPY
of a file. Every build runs through the real LocalExecutor (git fetch, buildah build,
push) with the registry layer cache on (``--cache-from``/``--cache-to``):

* cold: empty local storage, empty registry cache;
* warm: the same commit again on the same storage (host cache);
* last layer changed: a new commit that changes only the file of the last COPY;
* registry cache: empty local storage again, same commit as cold (layers from the registry).

Prints each time and the ratios to cold, and checks the targets: warm <= 0.15 x cold,
registry cache <= 0.3 x cold. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.executors.conftest import RecordingReporter
from tests.support.buildah import BuildahEnv, publish_busybox_base
from tests.support.gitrepo import GitDaemon, GitRepoFactory
from tests.support.registry import Registry
from triggerd.executors.base import Succeeded
from triggerd.executors.local import LocalExecutor
from triggerd.logs import LogStore
from triggerd.model import builds
from triggerd.model.buildconfigs import CACHE_ANNOTATION
from triggerd.settings import BuildahSettings, RegistrySettings, Settings

WARM_TARGET = 0.15
REGISTRY_TARGET = 0.3


def dockerfile(base: str, steps: int, seconds: float) -> str:
    lines = [f"FROM {base}"]
    lines += [f"RUN sleep {seconds:g} && echo step {i} > /step{i}" for i in range(steps)]
    lines.append("COPY app.txt /app.txt")
    return "\n".join(lines) + "\n"


async def timed_build(
    work: Path, registry: Registry, storage: str, repo_url: str, name: str, cache: str
) -> float:
    settings = Settings(
        data_dir=work / "data",
        registries={registry.host: RegistrySettings(insecure=True)},
        buildah=BuildahSettings(
            root=str(work / storage / "root"), runroot=str(work / storage / "run"),
            push_retries=1,
        ),
    )  # fmt: skip
    logs = LogStore(work / "logs")
    executor = LocalExecutor(settings, logs, work / "workspaces")
    build = builds.from_dict(
        {
            "apiVersion": "build.openshift.io/v1",
            "kind": "Build",
            "metadata": {
                "name": name,
                "namespace": "bench",
                "annotations": {CACHE_ANNOTATION: cache},
            },
            "spec": {
                "source": {"type": "Git", "git": {"uri": repo_url, "ref": "main"}},
                "strategy": {"type": "Docker", "dockerStrategy": {}},
                "output": {"to": {"kind": "DockerImage", "name": registry.ref("bench/app", name)}},
            },
        }
    )
    started = time.monotonic()
    outcome = await executor.run(build, RecordingReporter())
    elapsed = time.monotonic() - started
    if not isinstance(outcome, Succeeded):
        print(logs.read("bench", name).decode(), file=sys.stderr)
        raise SystemExit(f"build {name} failed: {outcome}")
    return elapsed


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry")
        daemon = GitDaemon(work / "git" / "repos", log_path=work / "git" / "daemon.log")
        registry.start()
        daemon.start()
        try:
            buildah_env = BuildahEnv(work / "base-buildah")
            buildah_env.allow_insecure(registry.host)
            base = publish_busybox_base(buildah_env, registry)
            repo = GitRepoFactory(daemon.base_dir, daemon)(
                "bench-app",
                {"Dockerfile": dockerfile(base, args.steps, args.step_seconds), "app.txt": "v1\n"},
            )
            cache = f"{registry.host}/cache/bench-app"
            cold = await timed_build(work, registry, "s1", repo.git_url, "cold", cache)
            warm = await timed_build(work, registry, "s1", repo.git_url, "warm", cache)
            repo.commit({"app.txt": "v2\n"}, message="change the last layer")
            last = await timed_build(work, registry, "s1", repo.git_url, "last-layer", cache)
            repo.commit({"app.txt": "v1\n"}, message="back to v1")
            remote = await timed_build(work, registry, "s2", repo.git_url, "registry", cache)
        finally:
            daemon.stop()
            registry.stop()
    rows = [
        ("cold (empty storage, empty registry cache)", cold, None),
        ("warm rebuild (host layer cache)", warm, WARM_TARGET),
        ("last layer changed (host layer cache)", last, None),
        ("empty storage + registry layer cache", remote, REGISTRY_TARGET),
    ]
    print(f"{args.steps} RUN steps of {args.step_seconds:g}s each, then one COPY")
    missed = False
    for label, seconds, target in rows:
        ratio = seconds / cold
        verdict = ""
        if target is not None:
            ok = ratio <= target
            missed |= not ok
            verdict = f"  target <= {target:.2f}x: {'met' if ok else 'MISSED'}"
        print(f"{label:46s} {seconds:7.2f}s  {ratio:5.2f}x cold{verdict}")
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=3.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
