"""Routing at scale: webhook intake with 10,000 BuildConfigs loaded against one, the time to
apply 10,000 BuildConfigs, and ``triggerd serve`` start time with them.

Run: ``python bench/routing_bench.py [--configs 10000] [--seconds 5] [--runs 3]``. Needs ``wrk``.

Intake reuses bench/intake_bench.py (its wrk driver, payload, BuildConfig and server helpers):
the same signed ~7 KB octokit push, a unique delivery id per request, 32 connections, the
app wired as ``triggerd serve`` wires it (``server.build_components``: SqliteStore, image
change runtime, every route) with the fake executor, posted to ``/hooks/github``. The
baseline holds the one matching BuildConfig; the measured store holds it plus
``--configs - 1`` others, each on its own repository with a GitHub trigger (so the repository
index really has 10,000 entries), none matching the push. Both are measured in the same
invocation, alternating, ``--runs`` times; medians and the ratio (target >= 0.9) are printed.

Apply time, two ways, into an empty store: ``Engine.apply_buildconfig`` 64 at a time (as
concurrent REST clients would; ``--runs`` times), and once from one YAML file given as
``buildConfigs`` at engine start (``Engine.load_buildconfig_files``, also SIGHUP's path),
which applies one config after the other and so takes longer than 10 s for 10,000.
Start time: a real ``python -m triggerd serve`` subprocess on a copy of the filled
database, from spawn to ``/readyz`` answering 200, against the same with one BuildConfig.
Prints the core count and load average. Writes only to temporary directories.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.intake_bench import (
    SECRET,
    Result,
    buildconfig,
    free_port,
    logging_to,
    payload,
    run_wrk,
    serve_as_triggerd,
    show,
)
from tests.e2e.server import TriggerdServer
from tests.fakes import FakeExecutor
from triggerd.engine import Engine
from triggerd.intake import signatures
from triggerd.logs import LogStore
from triggerd.server import build_components, settle_heap
from triggerd.settings import Settings
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore

HOST = "127.0.0.1"
CONNECTIONS = 32


def other_config(index: int) -> dict[str, Any]:
    """A BuildConfig on a repository of its own (none of them is the pushed one)."""
    doc = buildconfig()
    doc["metadata"]["name"] = f"other-{index}"
    doc["spec"]["source"]["git"]["uri"] = f"https://github.com/org-{index % 97}/repo-{index}.git"
    doc["spec"]["output"]["to"]["name"] = f"127.0.0.1:5000/other-{index}:latest"
    return doc


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _engine(data_dir: Path, settings: Settings) -> Engine:
    logs = LogStore(data_dir / "logs")
    return Engine(
        settings=settings,
        store=SqliteStore(data_dir / "triggerd.db"),
        executor=FakeExecutor(logs),
        logs=logs,
    )


def _docs(count: int) -> list[dict[str, Any]]:
    return [buildconfig(), *(other_config(i) for i in range(1, count))]


async def apply_from_file(work: Path, count: int) -> float:
    """Seconds to apply ``count`` BuildConfigs from a file at engine start (the production
    path: ``buildConfigs`` setting, also taken by SIGHUP), into an empty store."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"file-{count}-", dir=work))
    manifest = data_dir / "buildconfigs.yaml"
    manifest.write_text(yaml.safe_dump_all(_docs(count)))
    settings = Settings(data_dir=data_dir, api_tokens=("bench",), build_configs=(manifest,))
    engine = _engine(data_dir, settings)
    started = time.perf_counter()
    await engine.start()
    applied = time.perf_counter() - started
    stored = len(await engine.store.list_buildconfigs())
    await engine.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
    if stored != count:
        raise RuntimeError(f"{stored} BuildConfigs stored, {count} applied")
    return applied


async def prepare(work: Path, count: int) -> tuple[Path, float]:
    """A database holding ``count`` BuildConfigs (the matching one first), filled with
    ``Engine.apply_buildconfig`` calls 64 at a time (what concurrent REST clients get: the
    store commits them in groups); returns it and the seconds that took."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"template-{count}-", dir=work))
    engine = _engine(data_dir, Settings(data_dir=data_dir, api_tokens=("bench",)))
    await engine.start()
    docs = _docs(count)
    started = time.perf_counter()
    for first in range(0, count, 64):
        await asyncio.gather(*(engine.apply_buildconfig(d) for d in docs[first : first + 64]))
    applied = time.perf_counter() - started
    stored = len(await engine.store.list_buildconfigs())
    await engine.stop()
    if stored != count:
        raise RuntimeError(f"{stored} BuildConfigs stored, {count} applied")
    return data_dir / "triggerd.db", applied


async def round_intake(
    work: Path, template: Path, body: Path, signature: str, seconds: int
) -> tuple[Result, int, float]:
    """One wrk run against a fresh copy of ``template``; result, builds stored, start time."""
    data_dir = Path(tempfile.mkdtemp(prefix="round-", dir=work))
    shutil.copy(template, data_dir / "triggerd.db")
    settings = Settings(data_dir=data_dir, api_tokens=("bench",), max_concurrent_builds=1)
    # Wired as `triggerd serve` wires it (image change runtime included), builds "running"
    # in the fake executor: the same wiring as intake_bench.round_triggerd.
    engine, app = build_components(settings)
    engine.executor = FakeExecutor(cast(LogStore, engine.logs))
    port = free_port()
    with logging_to(data_dir / "triggerd.log"):
        started = time.perf_counter()
        runner = await serve_as_triggerd(app, port)  # starts the engine: loads every config
        start_seconds = time.perf_counter() - started
        settle_heap()  # as `triggerd serve` does once started
        try:
            result = await run_wrk(
                f"http://{HOST}:{port}", "/hooks/github", body, signature, CONNECTIONS, seconds
            )
            stored = len((await engine.store.list_builds(BuildQuery())).builds)
        finally:
            await runner.cleanup()
            gc.unfreeze()  # this round's heap is garbage now; the next round settles its own
    shutil.rmtree(data_dir, ignore_errors=True)
    return result, stored, start_seconds


def server_start(work: Path, template: Path) -> float:
    """Seconds from spawning ``triggerd serve`` on a copy of ``template`` to /readyz 200."""
    server = TriggerdServer(Path(tempfile.mkdtemp(prefix="serve-", dir=work)), {})
    data = server.data_dir / "data"
    data.mkdir(parents=True)
    shutil.copy(template, data / "triggerd.db")
    started = time.perf_counter()
    server.start()
    elapsed = time.perf_counter() - started
    server.stop()
    return elapsed


def median(values: list[float]) -> float:
    return statistics.median(values)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--no-file-apply",
        dest="file_apply",
        action="store_false",
        help="skip the (single, slow) run applying every config from a file at start",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    print(f"machine: {os.cpu_count()} cores, {load()}")
    work = Path(tempfile.mkdtemp(prefix="routing-bench-"))
    try:
        body = payload()
        body_path = work / "body.json"
        body_path.write_bytes(body)
        signature = signatures.sign_github(body, SECRET)

        one_db, _ = await prepare(work, 1)
        applies = []
        many_db = one_db
        for _ in range(args.runs):
            many_db, seconds = await prepare(work, args.configs)
            applies.append(seconds)
            print(f"  apply {args.configs} BuildConfigs, 64 concurrent: {seconds:.2f} s ({load()})")
        print(
            f"apply {args.configs} BuildConfigs, 64 concurrent: median {median(applies):.2f} s "
            f"({median(applies) / args.configs * 1e6:.0f} us each)"
        )
        if args.file_apply:
            seconds = await apply_from_file(work, args.configs)
            print(
                f"apply {args.configs} BuildConfigs from a buildConfigs file at start "
                f"(one run): {seconds:.2f} s ({seconds / args.configs * 1e6:.0f} us each; {load()})"
            )

        base: list[Result] = []
        ours: list[Result] = []
        starts: dict[str, list[float]] = {"1": [], "many": []}
        for run in range(args.runs):
            for label, template, results in (("1", one_db, base), ("many", many_db, ours)):
                result, stored, start_seconds = await round_intake(
                    work, template, body_path, signature, args.seconds
                )
                results.append(result)
                starts[label].append(start_seconds)
                good = result.requests - result.bad_status - result.socket_errors
                verdict = "ok" if good <= stored <= good + CONNECTIONS else "MISMATCH"
                name = "1 config" if label == "1" else f"{args.configs} cfg"
                print(f"run {run + 1} ({load()}):")
                show(name, result)
                print(f"  stored    {stored} builds for {good} answered deliveries ({verdict})")
        base_rate = median([r.rate for r in base])
        our_rate = median([r.rate for r in ours])
        print(
            f"intake, {CONNECTIONS} connections: 1 config {base_rate:.0f} req/s "
            f"(p99 {median([r.p99_ms for r in base]):.1f} ms), {args.configs} configs "
            f"{our_rate:.0f} req/s (p99 {median([r.p99_ms for r in ours]):.1f} ms); "
            f"ratio {our_rate / base_rate:.3f} (target >= 0.9)"
        )
        print(
            f"engine start in-process: 1 config {median(starts['1']) * 1000:.0f} ms, "
            f"{args.configs} configs {median(starts['many']) * 1000:.0f} ms"
        )

        serve_one = [server_start(work, one_db) for _ in range(args.runs)]
        serve_many = [server_start(work, many_db) for _ in range(args.runs)]
        print(
            f"triggerd serve to /readyz: 1 config {median(serve_one):.2f} s, "
            f"{args.configs} configs {median(serve_many):.2f} s "
            f"(ratio {median(serve_many) / median(serve_one):.2f}; {load()})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
