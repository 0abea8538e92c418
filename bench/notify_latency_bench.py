"""Notification-to-build latency: a ``buildah push`` moves a watched tag in the real CNCF
registry (``docker-registry``), the registry's push notification reaches triggerd's
``POST /hooks/registry/distribution``, and the image change build is stored.

Run: ``python bench/notify_latency_bench.py [--samples 20]``. Needs buildah and
docker-registry (as the e2e tests do). Writes only to a temporary directory.

triggerd runs in this process with its real pieces: the web app with the registry hook
route, the engine and its SQLite store, the image change runtime (builds are stored, then
left queued: a fake executor never runs them). The registry and buildah are separate
processes. Each sample commits a busybox variant (a new digest), pushes it to the watched
tag and waits (no sleeps) until the build pinned to that digest is stored; the next sample
starts when it is. Three figures per sample, from wall-clock times on this one machine:

- registry event → build stored: from the ``timestamp`` the registry puts in the push
  event (when it had stored the manifest) to the commit of the Build in the store: the
  notification-to-build latency (the registry's delivery included);
- hook received → build stored: triggerd's own part (parse, authenticate, act, store);
- buildah push exit → build stored: what a user sees (negative when the build was stored
  before buildah had exited: buildah is still closing after its manifest PUT).

The notification's arrival is noted by wrapping ``triggerd.intake.registries.parse`` (the
hook calls it once per delivery, after authentication); the build's by wrapping the SQLite
store's ``instantiate``. p50 and p99 over the samples (p99 of 20 samples is about their
maximum); the machine's core count is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web

from tests.fakes import FakeExecutor
from tests.support.buildah import BUSYBOX_LOCAL_NAME, BuildahEnv, build_busybox_base
from tests.support.ports import free_port
from tests.support.processes import async_wait_for
from tests.support.registry import NotificationEndpoint, Registry, RegistryConfig
from triggerd.engine import Engine
from triggerd.image_events import Notification, RegistryKind
from triggerd.imagechange_runtime import create_runtime
from triggerd.intake import registries
from triggerd.logs import LogStore
from triggerd.settings import RegistrySettings, Settings
from triggerd.store.base import BuildQuery, Delivery, Instantiated, NewBuild
from triggerd.store.sqlite import SqliteStore
from triggerd.web import app as web_app
from triggerd.web import registry_hooks

AUTH = "Bearer notify-latency-bench"
#: digest → when the registry's event says it was pushed, and when the hook received it
EVENT_TIME: dict[str, float] = {}
HOOK_TIME: dict[str, float] = {}
#: digest → when the build pinned to it was committed
STORED: dict[str, float] = {}


def parse_event_time(text: str) -> float:
    """RFC 3339 with nanoseconds (Go's format) → epoch seconds."""
    head, _, rest = text.rstrip("Z").partition(".")
    micro = (rest + "000000")[:6] if rest else "000000"
    return datetime.fromisoformat(f"{head}.{micro}+00:00").timestamp()


def instrument_parse() -> None:
    original = registries.parse

    def timed(kind: RegistryKind, headers: Mapping[str, str], body: bytes, ct: str) -> Any:
        received = time.time()
        note: Notification = original(kind, headers, body, ct)
        events = json.loads(body).get("events") or []
        for event in events:
            target = event.get("target") or {}
            if event.get("action") == "push" and target.get("tag") and target.get("digest"):
                EVENT_TIME.setdefault(target["digest"], parse_event_time(event["timestamp"]))
                HOOK_TIME.setdefault(target["digest"], received)
        return note

    registries.parse = timed  # type: ignore[assignment]


class TimedStore(SqliteStore):
    async def instantiate(
        self,
        requests: Sequence[NewBuild],
        *,
        delivery: Delivery | None = None,
        queue_limit: int = 0,
    ) -> Instantiated:
        result = await super().instantiate(requests, delivery=delivery, queue_limit=queue_limit)
        stored = time.time()
        for build in result.builds:
            for cause in build.triggered_by:
                image_id = (cause.get("imageChangeBuild") or {}).get("imageID", "")
                if "@" in image_id:
                    STORED.setdefault(image_id.rpartition("@")[2], stored)
        return result


def variant(env: BuildahEnv, n: int) -> str:
    name = f"localhost/triggerd-bench/notify-{n}:latest"
    if env.image_id(name) is None:
        ctr = env.run("from", "--pull-never", BUSYBOX_LOCAL_NAME).stdout.strip()
        env.run("config", "--label", f"triggerd.bench.sample={n}-{time.time_ns()}", ctr)
        env.run("commit", "--quiet", ctr, name)
        env.run("rm", ctr)
    return name


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def describe(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name}: p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms "
        f"(min {min(ms):.1f}, mean {statistics.mean(ms):.1f}, max {max(ms):.1f})"
    )


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="notify-latency-bench-"))
    env = BuildahEnv(work / "buildah")
    await asyncio.to_thread(build_busybox_base, env)
    hook_port = free_port()
    registry = Registry(
        work / "registry",
        RegistryConfig(
            notifications=[
                NotificationEndpoint(
                    name="triggerd",
                    url=f"http://127.0.0.1:{hook_port}/hooks/registry/distribution",
                    headers={"Authorization": [AUTH]},
                    timeout="2s",
                    backoff="100ms",
                )
            ]
        ),
    )
    await asyncio.to_thread(registry.start)
    env.allow_insecure(registry.host)
    instrument_parse()
    data = work / "triggerd"
    logs = LogStore(data / "logs")
    settings = Settings(
        data_dir=data,
        registries={registry.host: RegistrySettings(insecure=True)},
        registry_notifications={"distribution": {"authorization": AUTH}},
        api_tokens=("bench",),
    )
    engine = Engine(
        settings=settings,
        store=TimedStore(data / "triggerd.db"),
        executor=FakeExecutor(logs),
        logs=logs,
    )
    runtime = create_runtime(engine)
    engine.image_change = runtime
    app = web_app.make_app(engine, logs, settings, extra_routes=registry_hooks.ROUTES)
    app[registry_hooks.IMAGE_CHANGE] = runtime

    async def start_runtime(_app: web.Application) -> None:
        await runtime.start(poll=False)  # notifications only: no poll can race them

    async def stop_runtime(_app: web.Application) -> None:
        await runtime.stop()

    app.on_startup.append(start_runtime)
    app.on_cleanup.insert(0, stop_runtime)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", hook_port)
    await site.start()
    failures: list[str] = []
    try:
        ref = registry.ref("bench/base", "latest")
        first = await asyncio.to_thread(env.push, BUSYBOX_LOCAL_NAME, ref)
        doc = {
            "apiVersion": "build.openshift.io/v1",
            "kind": "BuildConfig",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {
                "source": {"type": "Dockerfile", "dockerfile": "FROM scratch\n"},
                "strategy": {
                    "type": "Docker",
                    "dockerStrategy": {"from": {"kind": "DockerImage", "name": ref}},
                },
                "triggers": [{"type": "ImageChange", "imageChange": {}}],
            },
        }
        await engine.create_buildconfig(doc)
        # The first digest reaches triggerd by the notification of the next push at the
        # latest; resolve it now so every sample below is a move.
        runtime.watcher.note_digest(f"{registry.host}/bench/base:latest", first)
        await runtime.trigger(
            await engine.store.get_buildconfig("default", "app"), {}, observed_at=None
        )
        images = [await asyncio.to_thread(variant, env, n) for n in range(args.samples)]
        to_event: list[float] = []
        to_hook: list[float] = []
        to_push_exit: list[float] = []
        for image in images:
            digest = await asyncio.to_thread(env.push, image, ref)
            pushed = time.time()

            def stored(wanted: str = digest) -> bool:
                return wanted in STORED

            await async_wait_for(stored, timeout=30, what=f"the build for {digest}")
            if digest not in EVENT_TIME:
                failures.append(f"no push event seen for {digest}")
                continue
            to_event.append(STORED[digest] - EVENT_TIME[digest])
            to_hook.append(STORED[digest] - HOOK_TIME[digest])
            to_push_exit.append(STORED[digest] - pushed)
        await runtime.drain()
        page = await engine.store.list_builds(BuildQuery(config_name="app"))
        print(f"machine: {os.cpu_count()} cores; {len(to_event)} samples")
        print(describe("registry event -> build stored", to_event))
        print(describe("hook received -> build stored", to_hook))
        print(describe("buildah push exit -> build stored", to_push_exit))
        print(f"builds of app: {len(page.builds)} (1 first resolution + {args.samples} moves)")
        if len(page.builds) != args.samples + 1:
            failures.append(f"{len(page.builds)} builds, expected {args.samples + 1}")
    finally:
        await runner.cleanup()
        await asyncio.to_thread(registry.stop)
        env.remove_storage()
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--samples", type=int, default=20)
    args: Any = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
