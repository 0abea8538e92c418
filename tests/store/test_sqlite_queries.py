"""SqliteStore.list_builds: filters, label selectors, order, pagination, memory at 100k builds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.store.helpers import config, new_build
from triggerd.errors import BadRequest
from triggerd.model import builds, requests
from triggerd.model import meta as metas
from triggerd.model.builds import Phase
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore

ROOT = Path(__file__).parents[2]


def names(page_builds: tuple[builds.Build, ...]) -> list[str]:
    return [f"{b.namespace}/{b.name}" for b in page_builds]


@pytest.fixture
async def labelled(store: SqliteStore) -> SqliteStore:
    """Builds with assorted labels in two namespaces and three configs."""
    for namespace, name in [("default", "api"), ("default", "web"), ("team-b", "api")]:
        await store.create_buildconfig(config(name, namespace, labels={"app": name}))
    specs = [
        ("default", "api", {"env": "prod", "tier": "backend"}),
        ("default", "api", {"env": "staging", "tier": "backend"}),
        ("default", "api", {}),
        ("default", "web", {"env": "prod", "tier": "frontend"}),
        ("default", "web", {"env": "dev"}),
        ("team-b", "api", {"env": "prod", 'we"ird': "yes"}),
    ]
    for namespace, name, labels in specs:
        await store.instantiate([new_build(name, namespace, labels=labels)])
    # One of them is running.
    web1 = await store.get_build("default", "web-1")
    await store.update_build(replace(web1, status=replace(web1.status, phase=Phase.RUNNING)))
    return store


async def test_everything_in_namespace_config_number_order(labelled: SqliteStore) -> None:
    page = await labelled.list_builds(BuildQuery())
    assert names(page.builds) == [
        "default/api-1",
        "default/api-2",
        "default/api-3",
        "default/web-1",
        "default/web-2",
        "team-b/api-1",
    ]
    assert page.continue_token is None
    assert int(page.resource_version) >= max(int(b.meta.resource_version) for b in page.builds)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (BuildQuery(namespace="team-b"), ["team-b/api-1"]),
        (
            BuildQuery(config_name="api"),
            ["default/api-1", "default/api-2", "default/api-3", "team-b/api-1"],
        ),
        (BuildQuery(namespace="default", config_name="web"), ["default/web-1", "default/web-2"]),
        (BuildQuery(phases=frozenset({Phase.RUNNING})), ["default/web-1"]),
        (
            BuildQuery(phases=frozenset({Phase.RUNNING, Phase.PENDING, Phase.COMPLETE})),
            ["default/web-1"],
        ),
        (BuildQuery(phases=frozenset({Phase.FAILED})), []),
        # env=prod
        (BuildQuery(labels={"env": "prod"}), ["default/api-1", "default/web-1", "team-b/api-1"]),
        # env=prod,tier=backend
        (BuildQuery(labels={"env": "prod", "tier": "backend"}), ["default/api-1"]),
        # tier
        (
            BuildQuery(label_present=frozenset({"tier"})),
            ["default/api-1", "default/api-2", "default/web-1"],
        ),
        # !env
        (BuildQuery(label_absent=frozenset({"env"})), ["default/api-3"]),
        # env in (staging, dev)
        (
            BuildQuery(label_in={"env": frozenset({"staging", "dev"})}),
            ["default/api-2", "default/web-2"],
        ),
        # env notin (prod): also the build without an env label, as in Kubernetes
        (
            BuildQuery(label_not_in={"env": frozenset({"prod"})}),
            ["default/api-2", "default/api-3", "default/web-2"],
        ),
        (BuildQuery(label_in={"env": frozenset()}), []),
        # Labels stamped by the build generator select a config's builds, as `oc` does.
        (
            BuildQuery(labels={builds.CONFIG_LABEL: "web"}, phases=frozenset({Phase.NEW})),
            ["default/web-2"],
        ),
        # A config's own labels are inherited by its builds.
        (
            BuildQuery(namespace="default", labels={"app": "api"}),
            ["default/api-1", "default/api-2", "default/api-3"],
        ),
        # Keys SQLite's JSON paths cannot quote are filtered in Python instead.
        (BuildQuery(labels={'we"ird': "yes"}), ["team-b/api-1"]),
        (BuildQuery(label_absent=frozenset({'we"ird'}), namespace="team-b"), []),
        (BuildQuery(label_present=frozenset({'we"ird'}), labels={"env": "prod"}), ["team-b/api-1"]),
        (
            BuildQuery(label_not_in={'we"ird': frozenset({"yes"})}, config_name="api"),
            [
                "default/api-1",
                "default/api-2",
                "default/api-3",
            ],
        ),
        (BuildQuery(label_in={'we"ird': frozenset({"yes", "no"})}), ["team-b/api-1"]),
    ],
)
async def test_filters(labelled: SqliteStore, query: BuildQuery, expected: list[str]) -> None:
    page = await labelled.list_builds(query)
    assert names(page.builds) == expected


async def test_python_filtered_pages_keep_order_and_tokens(labelled: SqliteStore) -> None:
    query = BuildQuery(label_absent=frozenset({'we"ird'}), limit=2)
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = await labelled.list_builds(replace(query, continue_token=token))
        seen += names(page.builds)
        pages += 1
        token = page.continue_token
        if token is None:
            break
    assert pages == 3
    assert seen == [
        "default/api-1",
        "default/api-2",
        "default/api-3",
        "default/web-1",
        "default/web-2",
    ]


async def test_pagination_over_a_thousand_builds(store: SqliteStore) -> None:
    for namespace, name in [("alpha", "svc"), ("default", "app"), ("default", "db")]:
        await store.create_buildconfig(config(name, namespace))
    # Numbers past 9 must sort numerically (app-2 before app-10), not as text.
    for _ in range(5):
        await store.instantiate(
            [new_build("app") for _ in range(100)]
            + [new_build("db") for _ in range(60)]
            + [new_build("svc", "alpha") for _ in range(40)]
        )
    expected = (
        [f"alpha/svc-{n}" for n in range(1, 201)]
        + [f"default/app-{n}" for n in range(1, 501)]
        + [f"default/db-{n}" for n in range(1, 301)]
    )
    for limit in (7, 250, 1000, 1001):
        seen: list[str] = []
        token: str | None = None
        while True:
            page = await store.list_builds(BuildQuery(limit=limit, continue_token=token))
            assert len(page.builds) <= limit
            seen += names(page.builds)
            token = page.continue_token
            if token is None:
                break
            assert len(page.builds) == limit
        assert seen == expected, limit

    # Filtered paging, and a page boundary that lands on the last match.
    page = await store.list_builds(BuildQuery(namespace="default", config_name="db", limit=300))
    assert len(page.builds) == 300 and page.continue_token is None


async def test_pages_continue_after_the_last_key_even_as_builds_change(store: SqliteStore) -> None:
    await store.create_buildconfig(config("app"))
    await store.instantiate([new_build("app") for _ in range(4)])
    first = await store.list_builds(BuildQuery(limit=2))
    assert names(first.builds) == ["default/app-1", "default/app-2"]
    await store.delete_builds("default", ["app-2", "app-3"])
    await store.instantiate([new_build("app")])
    rest = await store.list_builds(BuildQuery(limit=2, continue_token=first.continue_token))
    assert names(rest.builds) == ["default/app-4", "default/app-5"]
    assert rest.continue_token is None


@pytest.mark.parametrize(
    "token", ["", "!!!", "bm90IGpzb24", "WzEsMiwzXQ", "WyJhIiwiYiIsImMiLCJkIl0"]
)
async def test_bad_continue_tokens_are_bad_requests(store: SqliteStore, token: str) -> None:
    with pytest.raises(BadRequest, match="continue token"):
        await store.list_builds(BuildQuery(continue_token=token))


def test_a_hundred_thousand_builds_page_in_bounded_memory(tmp_path: Path) -> None:
    """Paging 100,000 stored builds stays far below 150 MB of RSS in a fresh process."""
    db = tmp_path / "triggerd.db"
    _fill(db, count=100_000, configs=50)
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from triggerd.model.builds import Phase
        from triggerd.store.base import BuildQuery
        from triggerd.store.sqlite import SqliteStore

        async def main():
            store = SqliteStore(Path({str(db)!r}))
            await store.open()
            counts = {{}}
            queries = {{
                "all": BuildQuery(limit=500),
                "label": BuildQuery(labels={{"shard": "3"}}, limit=500),
                # Filtered in Python: every row streams past, none is kept.
                "python-label": BuildQuery(labels={{'no"such': "x"}}, limit=500),
                "phase": BuildQuery(phases=frozenset({{Phase.RUNNING}}), limit=500),
            }}
            for name, query in queries.items():
                token, total, last = None, 0, None
                while True:
                    page = await store.list_builds(
                        BuildQuery(**{{**{{f: getattr(query, f) for f in query.__slots__}},
                                      "continue_token": token}})
                    )
                    for b in page.builds:
                        key = (b.namespace, b.config_name, b.number)
                        assert last is None or key > last, (key, last)
                        last = key
                    total += len(page.builds)
                    token = page.continue_token
                    if token is None:
                        break
                counts[name] = total
            await store.close()
            # VmHWM, not ru_maxrss: Linux carries the forking parent's peak (here the whole
            # pytest process) into ru_maxrss across exec.
            with open("/proc/self/status") as status:
                hwm = next(line for line in status if line.startswith("VmHWM:"))
            peak_mb = int(hwm.split()[1]) / 1024
            print(json.dumps({{"counts": counts, "peak_mb": round(peak_mb, 1)}}))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"] == {
        "all": 100_000,
        "label": 10_000,
        "python-label": 0,
        "phase": 10_000,
    }
    assert report["peak_mb"] <= 150, report
    print(report)


def _fill(db: Path, *, count: int, configs: int) -> None:
    """Write ``count`` real build documents straight into a migrated file (fast setup)."""

    async def create_configs() -> None:
        store = SqliteStore(db)
        await store.open()
        for c in range(configs):
            await store.create_buildconfig(config(f"app-{c:02d}"))
        await store.close()

    asyncio.run(create_configs())
    created = metas.now().replace(microsecond=0)
    per_config = count // configs
    # One generated build per config, varied per number as documents: generating 100,000
    # through the model would make this test slow for no extra coverage.
    templates = [
        requests.instantiate(
            config(f"app-{c:02d}"), requests.BuildRequest(), number=1, uid="", created=created
        ).to_dict()
        for c in range(configs)
    ]

    def rows() -> Iterator[tuple[object, ...]]:
        for i in range(count):
            c, n = divmod(i, per_config)
            number = n + 1
            doc = templates[c]
            name = f"app-{c:02d}-{number}"
            phase = Phase.RUNNING if n % 10 == 0 else Phase.NEW
            labels = {**doc["metadata"]["labels"], "shard": str(n % 10)}
            metadata = {
                **doc["metadata"],
                "name": name,
                "uid": f"uid-{i}",
                "resourceVersion": "1",
                "labels": labels,
                "annotations": {
                    **doc["metadata"]["annotations"],
                    builds.NUMBER_ANNOTATION: str(number),
                },
            }
            status = {**doc["status"], "phase": phase.value}
            body = json.dumps({**doc, "metadata": metadata, "status": status})
            yield (
                "default",
                name,
                f"app-{c:02d}",
                number,
                phase.value,
                f"uid-{i}",
                1,
                created.timestamp(),
                json.dumps(labels),
                body,
            )

    with sqlite3.connect(db) as raw:
        raw.executemany("INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
        raw.execute("UPDATE buildconfigs SET last_version = ?", (per_config,))
