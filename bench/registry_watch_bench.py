"""Registry tag watching at scale: 10,000 watched tags, one poll cycle, HEADs, tokens, CPU.

Run: ``python bench/registry_watch_bench.py [--tags 10000] [--repos 2000] [--cycles 3]``.

A counting registry (tests/imagechange/counting_registry.py: an aiohttp server answering
manifest HEADs behind the Bearer token flow, with tokens valid 300 s) runs in a separate
process on 127.0.0.1, so its CPU is not charged to the watcher; ``GET /_counts`` reports
what it received. This process runs the real :class:`~triggerd.images.watcher.TagWatcher`
with the real :class:`~triggerd.images.registry_client.RegistryClient` over aiohttp,
watching ``--tags`` distinct tags spread over ``--repos`` repositories (so ``--repos``
token scopes), every tag also asked for by a second, duplicate watch to show the
deduplication. Each cycle polls every tag once (``run_cycle``). Checks and prints:

- HEADs per cycle (must equal the number of distinct tags; the first cycle adds the single
  401 that teaches the client the registry's challenge);
- token requests (must be ≤ one per (realm, service, scope) per token lifetime);
- the watcher process's CPU seconds per cycle (``time.process_time``) and what that is as a
  share of one core at a 60 s poll interval (target ≤ 10 %).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web

from tests.imagechange.counting_registry import CountingRegistry
from triggerd.image_events import ImagePush, tag_key
from triggerd.images import references
from triggerd.images.registry_client import RegistryClient
from triggerd.images.watcher import TagWatcher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, tags: int, repos: int) -> None:
    """The registry process: push every tag, then serve until killed."""
    registry = CountingRegistry(auth="bearer", token_lifetime=300)
    registry.realm = f"http://127.0.0.1:{port}/token"
    for i in range(tags):
        registry.push(f"bench/repo{i % repos}", f"t{i // repos}")
    app = registry.app()

    async def counts(request: web.Request) -> web.Response:
        wanted = ("HEAD", "GET", "token")
        return web.json_response({k: registry.counts[k] for k in wanted})

    app.router.add_get("/_counts", counts)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def fetch_counts(session: aiohttp.ClientSession, port: int) -> dict[str, int]:
    async with session.get(f"http://127.0.0.1:{port}/_counts") as resp:
        return dict(json.loads(await resp.text()))


async def wait_up(session: aiohttp.ClientSession, port: int) -> None:
    for _ in range(300):
        try:
            await fetch_counts(session, port)
            return
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
    raise RuntimeError("bench registry did not start")


async def run(args: argparse.Namespace) -> int:
    port = free_port()
    proc = multiprocessing.Process(target=serve, args=(port, args.tags, args.repos), daemon=True)
    proc.start()
    failures: list[str] = []
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await wait_up(session, port)
            client = RegistryClient(session, insecure=lambda host: True)
            changes = 0

            async def on_change(push: ImagePush, seen: float) -> None:
                nonlocal changes
                changes += 1

            watcher = TagWatcher(
                client.head_digest,
                on_change,
                default_interval=60.0,
                concurrency=args.concurrency,
            )
            host = f"127.0.0.1:{port}"
            wanted: dict[str, tuple[references.ImageReference, float | None]] = {}
            asked = 0
            for i in range(args.tags):
                ref = references.parse(f"{host}/bench/repo{i % args.repos}:t{i // args.repos}")
                for interval in (60.0, 120.0):  # two watchers asking for the same tag
                    asked += 1
                    key = tag_key(ref)
                    if key not in wanted or interval < (wanted[key][1] or 1e9):
                        wanted[key] = (ref, interval)
            watcher.set_watches(wanted)
            print(f"watches asked for: {asked}; distinct tags watched: {len(watcher.keys)}")
            previous = await fetch_counts(session, port)
            for cycle in range(1, args.cycles + 1):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                results = await watcher.run_cycle()
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                now = await fetch_counts(session, port)
                heads = now["HEAD"] - previous["HEAD"]
                tokens = now["token"] - previous["token"]
                previous = now
                expected = args.tags + (1 if cycle == 1 else 0)
                share = 100.0 * cpu / 60.0
                print(
                    f"cycle {cycle}: {heads} HEADs (expected {expected}), {tokens} token "
                    f"requests, results {dict(results)}, wall {wall:.2f}s, watcher CPU "
                    f"{cpu:.2f}s = {share:.1f}% of one core at a 60s interval"
                )
                if heads != expected:
                    failures.append(f"cycle {cycle}: {heads} HEADs, expected {expected}")
                if cycle == 1 and tokens > args.repos:
                    failures.append(f"cycle 1: {tokens} token requests > {args.repos} scopes")
                if cycle > 1 and tokens != 0:
                    failures.append(f"cycle {cycle}: {tokens} token requests within lifetime")
                if cycle > 1 and share > 10.0:
                    failures.append(f"cycle {cycle}: CPU {share:.1f}% > 10% of a core")
            print(f"digest changes reported: {changes} (every tag once, on first sight)")
            if changes != args.tags:
                failures.append(f"{changes} changes reported, expected {args.tags}")
            print(f"client token requests: {client.token_requests}")
    finally:
        proc.terminate()
        proc.join(5)
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--repos", type=int, default=2_000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args: Any = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
