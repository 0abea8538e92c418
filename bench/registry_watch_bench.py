"""Registry tag watching at scale: 10,000 BuildConfigs, 20,000 ImageChange triggers on
10,000 distinct tags, the real runtime and its scheduled polling loop.

Run: ``python bench/registry_watch_bench.py [--configs 10000] [--repos 2000]
[--interval 10] [--window 60] [--token-lifetime 30]``.

A counting registry (tests/imagechange/counting_registry.py: an aiohttp server answering
manifest HEADs behind the Bearer token flow) runs in a separate process on 127.0.0.1, so
its CPU is not charged to the watcher; ``GET /_counts`` reports every request it received.
This process runs triggerd's own pieces: an engine with its SQLite store holding
``--configs`` BuildConfigs, each with two ImageChange triggers (its strategy's ``from``,
tag i, and tag i+1), so every tag is named by two triggers of two configs; the
:class:`~triggerd.imagechange_runtime.ImageChangeRuntime` indexes them at start and its
``_sync_watches`` gives the :class:`~triggerd.images.watcher.TagWatcher` one watch per
distinct tag. Then:

1. one poll cycle (``run_cycle``): exactly one HEAD per distinct tag (plus the one 401
   that teaches the client the registry's challenge), one token per (realm, service,
   scope); every config records its first digest (``imageChangeInitialBuild`` off);
2. the production loop (``run_forever``) for ``--window`` seconds at ``--interval``: HEADs
   per tag as the interval and its jitter allow, tokens renewed once per lifetime (the
   ``--token-lifetime`` is short so that the window crosses at least one expiry), no
   build started, and this process's CPU over the window, scaled to one 60 s interval:
   the share of one core polling 10,000 tags every minute would take (target ≤ 10 %).

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web

from tests.fakes import FakeExecutor
from tests.imagechange.counting_registry import CountingRegistry
from triggerd.engine import Engine
from triggerd.imagechange_runtime import ImageChangeRuntime
from triggerd.images import registry_client
from triggerd.images.registry_client import RegistryClient
from triggerd.images.streams_store import StreamsStore
from triggerd.logs import LogStore
from triggerd.model import buildconfigs
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore

JITTER = 0.1  # the watcher's default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tag_of(i: int, repos: int) -> tuple[str, str]:
    return f"bench/repo{i % repos}", f"t{i // repos}"


def serve(port: int, tags: int, repos: int, token_lifetime: int) -> None:
    """The registry process: push every tag, then serve until killed."""
    registry = CountingRegistry(auth="bearer", token_lifetime=token_lifetime)
    registry.realm = f"http://127.0.0.1:{port}/token"
    for i in range(tags):
        registry.push(*tag_of(i, repos))
    app = registry.app()

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(dict(registry.counts))

    app.router.add_get("/_counts", counts)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def fetch_counts(session: aiohttp.ClientSession, port: int) -> dict[str, int]:
    async with session.get(f"http://127.0.0.1:{port}/_counts") as resp:
        return dict(json.loads(await resp.text()))


async def wait_up(session: aiohttp.ClientSession, port: int) -> None:
    for _ in range(600):
        try:
            await fetch_counts(session, port)
            return
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
    raise RuntimeError("bench registry did not start")


def config_doc(i: int, args: argparse.Namespace, host: str) -> dict[str, Any]:
    own = "{}:{}".format(*tag_of(i, args.repos))
    neighbour = "{}:{}".format(*tag_of((i + 1) % args.configs, args.repos))
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": f"app{i}", "namespace": "default"},
        "spec": {
            "source": {"type": "Dockerfile", "dockerfile": "FROM scratch\n"},
            "strategy": {
                "type": "Docker",
                "dockerStrategy": {"from": {"kind": "DockerImage", "name": f"{host}/{own}"}},
            },
            "triggers": [
                {"type": "ImageChange", "imageChange": {}},
                {
                    "type": "ImageChange",
                    "imageChange": {"from": {"kind": "DockerImage", "name": f"{host}/{neighbour}"}},
                },
            ],
        },
    }


def delta(now: dict[str, int], before: dict[str, int], prefix: str) -> dict[str, int]:
    return {
        key: value - before.get(key, 0)
        for key, value in now.items()
        if key.startswith(prefix) and value - before.get(key, 0)
    }


async def run(args: argparse.Namespace) -> int:
    port = free_port()
    host = f"127.0.0.1:{port}"
    proc = multiprocessing.Process(
        target=serve, args=(port, args.configs, args.repos, args.token_lifetime), daemon=True
    )
    proc.start()
    failures: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="registry-watch-bench-"))
    print(f"machine: {os.cpu_count()} cores")
    try:
        async with aiohttp.ClientSession() as probe:
            await wait_up(probe, port)
            logs = LogStore(data / "logs")
            settings = Settings(data_dir=data, image_poll_interval_seconds=args.interval)
            engine = Engine(
                settings=settings,
                store=SqliteStore(data / "triggerd.db"),
                executor=FakeExecutor(logs),
                logs=logs,
            )
            await engine.start()
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    engine.store.create_buildconfig(buildconfigs.parse(config_doc(i, args, host)))
                    for i in range(args.configs)
                )
            )
            print(f"stored {args.configs} BuildConfigs in {time.perf_counter() - t0:.1f}s")
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            session = aiohttp.ClientSession(connector=connector)
            client = RegistryClient(session, insecure=lambda h: h == host)
            runtime = ImageChangeRuntime(
                engine,
                streams=StreamsStore(data / "imagestreams.db"),
                client=client,
                initial_build=False,
            )
            t0 = time.perf_counter()
            await runtime.start(poll=False)  # indexes every config; _sync_watches
            triggers = sum(len(w) for w in runtime._config_watches.values())
            watched = len(runtime.watcher.keys)
            print(
                f"runtime start: {triggers} ImageChange triggers in {len(runtime._config_watches)}"
                f" configs -> {watched} distinct watched tags "
                f"({time.perf_counter() - t0:.1f}s)"
            )
            if watched != args.configs:
                failures.append(f"{watched} watched tags, expected {args.configs}")

            # 1. One cycle: one HEAD per distinct tag, one token per scope.
            before = await fetch_counts(probe, port)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            results = await runtime.watcher.run_cycle()
            await runtime.drain()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            first_token_at = wall0
            after = await fetch_counts(probe, port)
            heads = after.get("HEAD", 0) - before.get("HEAD", 0)
            tokens = after.get("token", 0) - before.get("token", 0)
            print(
                f"first cycle: {heads} HEADs (expected {watched} + 1 challenge), {tokens} token "
                f"requests for {args.repos} scopes, results {dict(results)}, wall {wall:.1f}s, "
                f"CPU {cpu:.1f}s (includes recording {args.configs * 2} first trigger states)"
            )
            if heads != watched + 1:
                failures.append(f"first cycle: {heads} HEADs, expected {watched + 1}")
            if tokens > args.repos:
                failures.append(f"first cycle: {tokens} token requests > {args.repos} scopes")

            # 2. The production loop for a measured window.
            before = after
            loop_task = asyncio.create_task(runtime.watcher.run_forever())
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(args.window)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            after = await fetch_counts(probe, port)
            per_tag = delta(after, before, "HEAD ")
            heads = sum(per_tag.values())
            scopes = delta(after, before, "token ")
            total_scopes = delta(after, {}, "token ")
            lifetime = float(args.token_lifetime)
            renew_after = lifetime - min(registry_client.TOKEN_MARGIN_SECONDS, lifetime / 2)
            elapsed_with_tokens = time.perf_counter() - first_token_at
            allowed = math.floor(elapsed_with_tokens / renew_after) + 1
            cycles = wall / args.interval
            expected = watched * cycles
            least = math.floor(wall / (args.interval * (1 + JITTER))) - 1
            most = math.ceil(wall / (args.interval * (1 - JITTER))) + 1
            cpu_per_interval = cpu / cycles
            share = 100.0 * cpu_per_interval / 60.0
            page = await engine.store.list_builds(BuildQuery(limit=1))
            print(
                f"run_forever for {wall:.1f}s at a {args.interval:g}s interval "
                f"({cycles:.1f} intervals): {heads} HEADs (~{expected:.0f} expected), "
                f"per tag {min(per_tag.values(), default=0)}..{max(per_tag.values(), default=0)}"
                f" (allowed {least}..{most}), {sum(scopes.values())} token requests "
                f"({len(scopes)} scopes renewed, token lifetime {args.token_lifetime}s)"
            )
            print(
                f"token requests per scope since the first: max {max(total_scopes.values())}"
                f" over {elapsed_with_tokens:.0f}s (<= {allowed}: one per lifetime, renewed "
                f"{lifetime - renew_after:g}s before expiry)"
            )
            print(
                f"watcher process CPU: {cpu:.2f}s over the window = {cpu_per_interval:.2f}s per "
                f"interval of {watched} tags = {share:.1f}% of one core at a 60s interval"
            )
            if len(per_tag) != watched:
                failures.append(f"{len(per_tag)} of {watched} tags polled in the window")
            if per_tag and (min(per_tag.values()) < least or max(per_tag.values()) > most):
                failures.append("a tag was polled more or less often than its interval allows")
            if max(total_scopes.values()) > allowed:
                failures.append(f"a scope got {max(total_scopes.values())} tokens > {allowed}")
            if not scopes:
                failures.append("no token was renewed in the window: no expiry was crossed")
            if after.get("GET", 0):
                failures.append(f"{after['GET']} manifest GETs (HEAD should suffice)")
            if page.builds:
                failures.append("a build was started although no tag moved")
            if share > 10.0:
                failures.append(f"CPU {share:.1f}% > 10% of a core at a 60s interval")
            await runtime.stop()
            await session.close()
            await engine.stop()
    finally:
        proc.terminate()
        proc.join(5)
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--configs", type=int, default=10_000)
    parser.add_argument("--repos", type=int, default=2_000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--token-lifetime", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=64)
    args: Any = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
