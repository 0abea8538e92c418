"""Instantiate throughput of SqliteStore against a naive per-call commit on the event loop.

Run: ``python bench/store_bench.py [--seconds 3] [--callers 32]``. Each of the callers
does sequential ``instantiate`` calls (one build, a unique delivery key) for the given time,
first against :class:`triggerd.store.sqlite.SqliteStore` (one writer thread, group commit),
then against a baseline doing the same SQL and JSON work, synchronously on the event loop with
one ``synchronous=FULL`` commit per call. Prints calls/s for both, the ratio, the writer's
group sizes, and the worst event-loop stall seen during each run (the baseline blocks the loop
for every fsync; the store must not). Writes only to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triggerd.model import buildconfigs, builds, requests
from triggerd.model import meta as metas
from triggerd.store import sqlite as sqlite_store
from triggerd.store.base import Delivery, NewBuild

Instantiate = Callable[[str, str], Awaitable[Any]]


def config_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "build.openshift.io/v1",
        "kind": "BuildConfig",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "source": {"git": {"uri": f"https://example.com/{name}.git", "ref": "main"}},
            "strategy": {"type": "Docker", "dockerStrategy": {}},
            "output": {"to": {"kind": "DockerImage", "name": f"127.0.0.1:5000/{name}:latest"}},
        },
    }


def make(config: buildconfigs.BuildConfig, number: int) -> builds.Build:
    return requests.instantiate(
        config, requests.BuildRequest(), number=number, uid="", created=metas.now()
    )


class Baseline:
    """The same work as SqliteStore.instantiate, one blocking commit per call on the loop."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        sqlite_store.migrate(self.conn)
        self.rv = 0
        # Given the same parsed-config cache as the store, so only the commit strategy differs.
        self.configs: dict[str, buildconfigs.BuildConfig] = {}

    def create(self, config: buildconfigs.BuildConfig) -> None:
        self.rv += 1
        stored = config.with_server_fields(
            uid=str(uuid.uuid4()), resource_version=str(self.rv), creation_timestamp=metas.now()
        )
        self.conn.execute(
            "INSERT INTO buildconfigs VALUES (?, ?, ?, ?, ?, ?)",
            (
                stored.namespace,
                stored.name,
                stored.meta.uid,
                self.rv,
                0,
                json.dumps(stored.to_dict()),
            ),
        )
        self.configs[stored.name] = stored

    async def instantiate(self, name: str, key: str) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if c.execute("SELECT 1 FROM deliveries WHERE key = ?", (key,)).fetchone():
                raise AssertionError("keys are unique in this benchmark")
            row = c.execute(
                "SELECT resource_version, last_version FROM buildconfigs"
                " WHERE namespace = 'default' AND name = ?",
                (name,),
            ).fetchone()
            config = self.configs[name]
            number = row[1] + 1
            self.rv += 1
            config = config.with_server_fields(resource_version=str(self.rv), last_version=number)
            build = make(config, number)
            build = replace(
                build,
                meta=replace(build.meta, uid=str(uuid.uuid4()), resource_version=str(self.rv)),
            )
            c.execute(
                "INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    build.namespace,
                    build.name,
                    name,
                    number,
                    build.phase.value,
                    build.meta.uid,
                    self.rv,
                    time.time(),
                    json.dumps(dict(build.meta.labels)),
                    json.dumps(build.to_dict()),
                ),
            )
            c.execute(
                "UPDATE buildconfigs SET resource_version = ?, last_version = ?, doc = ?"
                " WHERE namespace = 'default' AND name = ?",
                (self.rv, number, json.dumps(config.to_dict()), name),
            )
            c.execute(
                "INSERT INTO deliveries VALUES (?, ?, ?)",
                (key, time.time(), json.dumps([["default", build.name]])),
            )
            c.execute("UPDATE counter SET value = ? WHERE id = 0", (self.rv,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self.configs[name] = config
        # A handler returns to the loop between requests; without this one caller would run
        # alone for the whole measurement and the loop would do no scheduling work at all.
        await asyncio.sleep(0)


async def drive(instantiate: Instantiate, callers: int, seconds: float) -> tuple[int, float, float]:
    """Returns (calls, elapsed seconds, worst event-loop stall in ms)."""
    deadline = time.perf_counter() + seconds
    done = 0
    worst_stall = 0.0
    running = True

    async def watch_loop() -> None:
        nonlocal worst_stall
        while running:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst_stall = max(worst_stall, time.perf_counter() - before - 0.001)

    async def caller(i: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < deadline:
            await instantiate(f"app-{i}", f"bench:{i}:{n}")
            n += 1
        done += n

    watcher = asyncio.create_task(watch_loop())
    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.perf_counter() - start
    running = False
    await watcher
    return done, elapsed, worst_stall * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--callers", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="triggerd-bench-") as tmp:
        store = sqlite_store.SqliteStore(Path(tmp) / "store" / "triggerd.db")
        await store.open()
        for i in range(args.callers):
            await store.create_buildconfig(buildconfigs.parse(config_doc(f"app-{i}")))

        async def store_call(name: str, key: str) -> Any:
            received = datetime.now(UTC)
            return await store.instantiate(
                [NewBuild(namespace="default", config_name=name, make=make)],
                delivery=Delivery(key=key, received=received),
            )

        calls, elapsed, stall = await drive(store_call, args.callers, args.seconds)
        stats = store.stats()
        await store.close()
        store_rate = calls / elapsed
        print(
            f"SqliteStore (group commit):  {store_rate:8.0f} calls/s  ({calls} calls, "
            f"{stats.groups} commits, mean group {stats.writes / max(stats.groups, 1):.1f}, "
            f"largest {stats.largest_group}, worst loop stall {stall:.1f} ms)"
        )

        baseline = Baseline(Path(tmp) / "baseline.db")
        for i in range(args.callers):
            baseline.create(buildconfigs.parse(config_doc(f"app-{i}")))
        calls, elapsed, stall = await drive(baseline.instantiate, args.callers, args.seconds)
        baseline.conn.close()
        base_rate = calls / elapsed
        print(
            f"baseline (commit per call):  {base_rate:8.0f} calls/s  ({calls} calls, "
            f"worst loop stall {stall:.1f} ms)"
        )
        print(f"ratio store/baseline: {store_rate / base_rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
