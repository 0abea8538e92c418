"""``triggerd serve`` with ``imagePollInterval`` and ``registryNotifications`` settings: the
production polling loop (``TagWatcher.run_forever`` inside the server process) against the
real registry — a tag moved with ``buildah push`` starts exactly one build — and the poll
interval with its jitter, measured as the HEADs a counting registry receives."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.e2e.server import API, TriggerdServer
from tests.imagechange.counting_registry import CountingRegistry
from tests.imagechange.helpers import docker_ref, image_config_doc
from tests.support.buildah import BUSYBOX_LOCAL_NAME, BuildahEnv, build_busybox_base
from tests.support.processes import async_wait_for
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.e2e
INTERVAL = 1.0
#: the watcher's jitter: every interval is drawn from interval * (1 +- JITTER)
JITTER = 0.1


class TimedRegistry(CountingRegistry):
    """Also remembers when each manifest HEAD arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.head_times: list[float] = []

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            self.head_times.append(time.monotonic())
        return await super().manifest(request)


def variant(env: BuildahEnv, label: str) -> str:
    name = f"localhost/triggerd-tests/serve-{label}:latest"
    if env.image_id(name) is None:
        ctr = env.run("from", "--pull-never", BUSYBOX_LOCAL_NAME).stdout.strip()
        env.run("config", "--label", f"triggerd.serve={label}", ctr)
        env.run("commit", "--quiet", ctr, name)
        env.run("rm", ctr)
    return name


def failing_fast(doc: dict[str, Any]) -> dict[str, Any]:
    """Builds of this config fail at once (a git source on a closed port): what is under
    test is which builds are created, not buildah."""
    doc["spec"]["source"] = {"type": "Git", "git": {"uri": "git://127.0.0.1:1/none.git"}}
    return doc


async def test_serve_polls_at_the_interval_and_a_tag_move_builds_once(
    tmp_path: Path,
    buildah_env: BuildahEnv,
    registry_factory: RegistryFactory,
    aiohttp_server: Any,
) -> None:
    await asyncio.to_thread(build_busybox_base, buildah_env)
    real = registry_factory()
    timed = TimedRegistry()
    counting_server: TestServer = await aiohttp_server(timed.app(), host="127.0.0.1")
    counting_host = f"127.0.0.1:{counting_server.port}"
    timed.push("probe/base", "latest")
    server = TriggerdServer(
        tmp_path / "serve",
        {
            "imagePollInterval": f"{INTERVAL:g}s",
            "registries": {real.host: {"insecure": True}, counting_host: {"insecure": True}},
            "registryNotifications": {"distribution": {"authorization": "Bearer n"}},
        },
    )
    await asyncio.to_thread(server.start)
    try:
        ref = real.ref("serve/base", "latest")
        first = await asyncio.to_thread(buildah_env.push, BUSYBOX_LOCAL_NAME, ref)
        app = failing_fast(image_config_doc("app", base=docker_ref(ref)))
        probe = failing_fast(
            image_config_doc("probe", base=docker_ref(f"{counting_host}/probe/base:latest"))
        )
        for doc in (app, probe):
            await asyncio.to_thread(server.apply, doc)

        async def builds(config: str) -> list[dict[str, Any]]:
            status, answer = await asyncio.to_thread(
                server.request,
                "GET",
                f"{API}/builds?labelSelector=openshift.io/build-config.name%3D{config}",
            )
            assert status == 200, answer
            return sorted(answer["items"], key=lambda b: b["metadata"]["name"])

        async def count(config: str, n: int) -> bool:
            return len(await builds(config)) == n

        await async_wait_for(lambda: count("app", 1), timeout=30, what="the first resolution")
        moved = await asyncio.to_thread(variant, buildah_env, "moved")
        second = await asyncio.to_thread(buildah_env.push, moved, ref)
        await async_wait_for(lambda: count("app", 2), timeout=30, what="the tag move's build")
        # Several more polls of the unchanged tag start nothing.
        seen = len(timed.head_times)
        await async_wait_for(
            lambda: len(timed.head_times) >= seen + 4, timeout=30, what="four more polls"
        )
        found = await builds("app")
        assert len(found) == 2
        pins = [b["spec"]["strategy"]["dockerStrategy"]["from"]["name"] for b in found]
        assert pins == [f"{real.host}/serve/base@{first}", f"{real.host}/serve/base@{second}"]
        assert [b["spec"]["triggeredBy"][0]["message"] for b in found] == ["Image change"] * 2

        # The interval and its jitter, measured on the counting registry: one HEAD per
        # interval, never sooner than interval * (1 - jitter).
        await async_wait_for(lambda: len(timed.head_times) >= 8, timeout=30, what="8 polls")
        gaps = [b - a for a, b in zip(timed.head_times[1:], timed.head_times[2:], strict=False)]
        assert min(gaps) >= INTERVAL * (1 - JITTER) - 0.02, gaps
        # Later only by scheduling delays on a busy machine, never by a whole interval.
        assert max(gaps) < INTERVAL * (1 + JITTER) + 0.5, gaps
        assert INTERVAL * (1 - JITTER) <= statistics.mean(gaps) <= INTERVAL * (1 + JITTER) + 0.2
        assert len(set(round(g, 3) for g in gaps)) > 1  # jittered, not a fixed period
        assert timed.counts["HEAD"] == len(timed.head_times)
        assert timed.counts["GET"] == 0
    finally:
        await asyncio.to_thread(server.stop)
        print(server.log_text())
