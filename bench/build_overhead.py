"""Build overhead: a build through triggerd against the same buildah commands run directly.

Run: ``python bench/build_overhead.py [--runs 3] [--sleep 2] [--example]``. Starts, on
127.0.0.1, a real registry, a git daemon with a small repository (a busybox base, a RUN step
that sleeps ``--sleep`` seconds, a COPY; or, with ``--example``, the files of examples/hello
with the build args of config/buildconfigs/hello.yaml: the build `make run` demonstrates) and
a real ``triggerd serve``. Each run measures, from empty buildah storage:

- triggerd cold: POST instantiate → the log follow ends (the build is final), and the
  Build's own status.duration;
- triggerd warm: the same again on the now-filled storage (layer cache);
- direct cold/warm: ``git fetch`` of the same ref (a manual build fetches the config's ref;
  over git:// a fetch by ref takes one round trip more than a fetch by commit), then
  ``buildah build`` and ``buildah push --digestfile`` with the flags triggerd uses, on a
  fresh storage of its own.

The two sides take turns at going first. Prints each figure, medians over the runs, and
the ratios triggerd / direct. Writes only to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from tests.e2e.server import API, TOKEN, TriggerdServer, elapsed
from tests.support.buildah import BuildahEnv, publish_busybox_base
from tests.support.gitrepo import GitDaemon, GitRepoFactory
from tests.support.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hello"
DEMO_CONFIG = ROOT / "config" / "buildconfigs" / "hello.yaml"


def follow(server: TriggerdServer, name: str) -> None:
    req = urllib.request.Request(f"{server.url}{API}/builds/{name}/log?follow=true")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=600) as resp:
        while resp.read(65536):
            pass


def through_triggerd(server: TriggerdServer) -> tuple[float, float]:
    started = time.perf_counter()
    name = server.start_build("bench")
    follow(server, name)
    wall = time.perf_counter() - started
    build = server.build(name)
    assert build["status"]["phase"] == "Complete", build["status"]
    return wall, elapsed(build)


def example_files(base: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """examples/hello, FROM the bench's base image, and the demo BuildConfig's build args."""
    files = {p.name: p.read_text() for p in EXAMPLE.iterdir() if p.is_file()}
    lines = files["Dockerfile"].splitlines()
    files["Dockerfile"] = "\n".join(
        f"FROM {base}" if line.startswith("FROM ") else line for line in lines
    )
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    args = config["spec"]["strategy"]["dockerStrategy"].get("buildArgs", [])
    return files, [(a["name"], a["value"]) for a in args]


def direct(
    env: BuildahEnv,
    url: str,
    ref: str,
    image: str,
    work: Path,
    build_args: list[tuple[str, str]],
) -> tuple[float, float]:
    """(fetch + build + push seconds, build + push seconds) with triggerd's buildah flags."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    for argv in (
        ["git", "init", "--quiet", str(work / "src")],
        ["git", "-C", str(work / "src"), "fetch", "--depth=1", "--no-tags", "--", url, ref],
        ["git", "-C", str(work / "src"), "checkout", "--quiet", "--detach", "FETCH_HEAD"],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    fetched = time.perf_counter()
    env.run(
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--layers",
        "--force-rm",
        "--pull=missing",
        "--tls-verify=false",
        *(f"--build-arg={name}={value}" for name, value in build_args),
        "--file",
        str(work / "src" / "Dockerfile"),
        "--tag",
        image,
        str(work / "src"),
    )
    env.run(
        "push",
        "--retry",
        "3",
        "--tls-verify=false",
        "--digestfile",
        str(work / "digest"),
        image,
        f"docker://{image}",
    )
    done = time.perf_counter()
    return done - started, done - fetched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sleep", type=int, default=2, help="seconds the RUN step sleeps")
    parser.add_argument(
        "--example", action="store_true", help="build examples/hello, as make run does"
    )
    args = parser.parse_args()
    what = "examples/hello" if args.example else f"a RUN step sleeping {args.sleep}s"
    print(f"cores: {os.cpu_count()}, runs: {args.runs}, building {what}")
    tmp = Path(tempfile.mkdtemp(prefix="triggerd-bench-"))
    registry = Registry(tmp / "registry").start()
    daemon = GitDaemon(tmp / "git").start()
    server: TriggerdServer | None = None
    try:
        base_env = BuildahEnv(tmp / "base-buildah")
        base = publish_busybox_base(base_env, registry)
        files: dict[str, str] = {
            "Dockerfile": f"FROM {base}\nRUN sleep {args.sleep} && echo slow > /slow\n"
            'COPY app.txt /app.txt\nCMD ["cat", "/app.txt"]\n',
            "app.txt": "bench\n",
        }
        build_args: list[tuple[str, str]] = []
        if args.example:
            files, build_args = example_files(base)
        repo = GitRepoFactory(tmp / "git", daemon)("bench", files)
        storage = tmp / "triggerd-storage"
        server = TriggerdServer(
            tmp / "triggerd",
            {
                "registries": {registry.host: {"insecure": True}},
                "buildah": {"root": str(storage / "root"), "runroot": str(storage / "run")},
            },
        ).start()
        server.apply(
            {
                "apiVersion": "build.openshift.io/v1",
                "kind": "BuildConfig",
                "metadata": {"name": "bench"},
                "spec": {
                    "source": {"git": {"uri": repo.git_url, "ref": "main"}},
                    "strategy": {
                        "dockerStrategy": {
                            "buildArgs": [{"name": k, "value": v} for k, v in build_args]
                        }
                    },
                    "output": {
                        "to": {"kind": "DockerImage", "name": registry.ref("bench/triggerd")}
                    },
                    "successfulBuildsHistoryLimit": 100,
                },
            }
        )
        rows: dict[str, list[float]] = {
            k: []
            for k in (
                "triggerd cold wall",
                "triggerd cold status.duration",
                "triggerd warm wall",
                "triggerd warm status.duration",
                "direct cold fetch+build+push",
                "direct cold build+push",
                "direct warm fetch+build+push",
                "direct warm build+push",
            )
        }

        def triggerd_pair() -> None:
            shutil.rmtree(storage, ignore_errors=True)
            for kind in ("cold", "warm"):
                wall, duration = through_triggerd(server)
                rows[f"triggerd {kind} wall"].append(wall)
                rows[f"triggerd {kind} status.duration"].append(duration)

        def direct_pair(run: int) -> None:
            env = BuildahEnv(tmp / f"direct-{run}")
            env.allow_insecure(registry.host)
            for kind in ("cold", "warm"):
                total, build_push = direct(
                    env,
                    repo.git_url,
                    "main",
                    registry.ref("bench/direct"),
                    tmp / "direct-work",
                    build_args,
                )
                rows[f"direct {kind} fetch+build+push"].append(total)
                rows[f"direct {kind} build+push"].append(build_push)
            env.remove_storage()

        for run in range(1, args.runs + 1):
            # Taking turns at going first: whatever the previous pair left in the page
            # cache or the registry favours neither side.
            if run % 2:
                triggerd_pair()
                direct_pair(run)
            else:
                direct_pair(run)
                triggerd_pair()
            print(f"run {run}: " + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in rows.items()))
        med = {k: statistics.median(v) for k, v in rows.items()}
        print("\nmedians:")
        for key, value in med.items():
            print(f"  {key:34s} {value:7.2f} s")
        print("\nratios (triggerd wall / direct):")
        for kind in ("cold", "warm"):
            wall = med[f"triggerd {kind} wall"]
            full = wall / med[f"direct {kind} fetch+build+push"]
            bare = wall / med[f"direct {kind} build+push"]
            print(f"  {kind}: vs fetch+build+push {full:.2f}, vs build+push {bare:.2f}")
        print(
            f"  warm / cold (triggerd): {med['triggerd warm wall'] / med['triggerd cold wall']:.2f}"
        )
    finally:
        if server is not None:
            server.stop()
        daemon.stop()
        registry.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
