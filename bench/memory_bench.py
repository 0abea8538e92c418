"""Memory and read latency at size: ``triggerd serve`` holding 10,000 BuildConfigs and
100,000 Build records, against an empty server.

Run: ``python bench/memory_bench.py [--configs 10000] [--builds 100000] [--runs 3]``.

The records are written straight into a SQLite file with :class:`SqliteStore` before the
server starts (10 finished builds per config: Complete, with start and completion times, as
history looks; New builds would be started by the scheduler). Each run starts a real
``python -m triggerd serve`` on a copy of that file and measures: time to ``/readyz``; RSS
(``VmRSS``) when ready and after the read workload, and the peak (``VmHWM``); the latency
of each page when listing builds with ``limit=500`` and ``continue`` (the first ``--pages``
pages, 10 by default: a page costs ~0.5 s on a loaded 2-core machine, so all 200 would
take minutes per run), of listing every BuildConfig the same way (the API answers that list
in one response whatever the limit: ``buildconfig_list_requests`` says how many it took),
of a label-selected list (one config's builds), and of 200 single-build GETs at random, with
the RSS after each phase. The empty server is measured the same way in the same
invocation. Target: RSS <= 150 MB at full size. Prints medians over
runs, the core count and the load average. Writes only to temporary directories.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.server import API, TOKEN, TriggerdServer
from triggerd import lifecycle
from triggerd.model import buildconfigs, builds, requests
from triggerd.model.builds import Phase
from triggerd.store.base import NewBuild
from triggerd.store.sqlite import SqliteStore

GETS = 200
PAGE = 500
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def config_doc(index: int) -> dict[str, Any]:
    name = f"app-{index}"
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": name, "namespace": "default", "labels": {"team": f"t{index % 50}"}},
        "spec": {
            "successfulBuildsHistoryLimit": 20,
            "source": {
                "type": "Git",
                "git": {"uri": f"https://github.com/org-{index % 97}/{name}.git", "ref": "main"},
            },
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {
                "to": {"kind": "DockerImage", "name": f"registry.example.com/{name}:latest"}
            },
            "triggers": [{"type": "GitHub", "github": {"secret": f"secret-{index}"}}],
        },
    }


def finished(config: buildconfigs.BuildConfig, number: int) -> builds.Build:
    created = T0 + timedelta(minutes=number)
    build = requests.instantiate(
        config, requests.BuildRequest(), number=number, uid="", created=created
    )
    for phase, offset in ((Phase.PENDING, 1), (Phase.RUNNING, 2), (Phase.COMPLETE, 90)):
        build = lifecycle.advance(build, phase, now=created + timedelta(seconds=offset))
    return lifecycle.record_output(
        build,
        digest="sha256:" + f"{number:064x}",
        image_reference=f"registry.example.com/{config.name}@sha256:{number:064x}",
    )


async def populate(path: Path, configs: int, total_builds: int) -> float:
    started = time.perf_counter()
    store = SqliteStore(path)
    await store.open()
    try:
        for first in range(0, configs, 500):
            await asyncio.gather(
                *(
                    store.create_buildconfig(buildconfigs.parse(config_doc(i)))
                    for i in range(first, min(configs, first + 500))
                )
            )
        per_config = total_builds // configs if configs else 0
        batch: list[NewBuild] = []
        for round_ in range(per_config):
            for i in range(configs):
                batch.append(NewBuild(namespace="default", config_name=f"app-{i}", make=finished))
                if len(batch) == 1000:
                    await store.instantiate(batch)
                    batch = []
            del round_
        if batch:
            await store.instantiate(batch)
    finally:
        await store.close()
    return time.perf_counter() - started


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found for {pid}")


def get(server: TriggerdServer, path: str) -> tuple[float, Any]:
    request = urllib.request.Request(server.url + path)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    return time.perf_counter() - started, body


def list_pages(
    server: TriggerdServer, resource: str, pages: int | None = None
) -> tuple[list[float], int]:
    """Times of the first ``pages`` pages (all when None) and how many items they held."""
    times: list[float] = []
    count = 0
    token = ""
    while pages is None or len(times) < pages:
        query = f"?limit={PAGE}" + (f"&continue={quote(token)}" if token else "")
        elapsed, body = get(server, f"{API}/{resource}{query}")
        times.append(elapsed)
        count += len(body["items"])
        token = body["metadata"].get("continue") or ""
        if not token:
            break
    return times, count


def ms(values: list[float], fraction: float = 0.5) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000


def measure(
    work: Path, template: Path | None, configs: int, total: int, pages: int
) -> dict[str, float]:
    server = TriggerdServer(Path(tempfile.mkdtemp(prefix="serve-", dir=work)), {})
    if template is not None:
        (server.data_dir / "data").mkdir(parents=True)
        shutil.copy(template, server.data_dir / "data" / "triggerd.db")
    started = time.perf_counter()
    server.start()
    ready = time.perf_counter() - started
    assert server.process is not None
    pid = server.process.pid
    figures: dict[str, float] = {"ready_s": ready, "rss_ready_mb": rss_kb(pid) / 1024}
    try:
        times, count = list_pages(server, "builds", pages)
        if count != min(total, pages * PAGE):
            raise RuntimeError(f"listed {count} builds in {pages} pages of {PAGE}")
        figures["rss_after_build_pages_mb"] = rss_kb(pid) / 1024
        config_pages, config_count = list_pages(server, "buildconfigs")
        if config_count != configs:
            raise RuntimeError(f"listed {config_count} BuildConfigs, expected {configs}")
        figures["buildconfig_list_requests"] = len(config_pages)
        figures["rss_after_config_list_mb"] = rss_kb(pid) / 1024
        rng = random.Random(7)
        gets: list[float] = []
        selected: list[float] = []
        if configs:
            per_config = total // configs
            for _ in range(GETS):
                name = f"app-{rng.randrange(configs)}-{rng.randrange(per_config) + 1}"
                gets.append(get(server, f"{API}/builds/{name}")[0])
            for _ in range(20):
                label = quote(f"openshift.io/build-config.name=app-{rng.randrange(configs)}")
                selected.append(get(server, f"{API}/builds?labelSelector={label}")[0])
        figures.update(
            {
                "list_page_p50_ms": ms(times),
                "list_page_p99_ms": ms(times, 0.99),
                "config_list_p50_ms": ms(config_pages),
                "get_p50_ms": ms(gets) if gets else 0.0,
                "get_p99_ms": ms(gets, 0.99) if gets else 0.0,
                "selector_p50_ms": ms(selected) if selected else 0.0,
                "rss_after_mb": rss_kb(pid) / 1024,
                "rss_peak_mb": rss_kb(pid, "VmHWM") / 1024,
            }
        )
    finally:
        server.stop()
    return figures


def summarize(label: str, runs: list[dict[str, float]], show: Callable[[str], bool]) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{label} (medians of {len(runs)} runs, load {load}):")
    for key in runs[0]:
        if show(key):
            values = [r[key] for r in runs]
            print(f"  {key:<20} {statistics.median(values):9.2f}   runs: {values}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=10_000)
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--pages", type=int, default=10, help="pages of builds listed per run (all: 0)"
    )
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    try:
        template = work / "template.db"
        seconds = asyncio.run(populate(template, args.configs, args.builds))
        size = template.stat().st_size / 1024 / 1024
        print(
            f"populated {args.configs} BuildConfigs and {args.builds} builds in {seconds:.1f} s "
            f"({size:.0f} MB file)"
        )
        pages = args.pages or -(-args.builds // PAGE)
        empty = [measure(work, None, 0, 0, pages) for _ in range(args.runs)]
        full = [measure(work, template, args.configs, args.builds, pages) for _ in range(args.runs)]
        summarize("empty server", empty, lambda k: k in ("ready_s", "rss_ready_mb", "rss_peak_mb"))
        summarize(f"{args.configs} configs, {args.builds} builds", full, lambda k: True)
        peak = statistics.median(r["rss_peak_mb"] for r in full)
        base = statistics.median(r["rss_peak_mb"] for r in empty)
        verdict = "met" if peak <= 150 else "MISSED"
        print(
            f"peak RSS {peak:.1f} MB vs empty {base:.1f} MB (x{peak / base:.2f}); "
            f"target <= 150 MB: {verdict}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
