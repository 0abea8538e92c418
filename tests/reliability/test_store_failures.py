"""A store that cannot write answers 503 with Retry-After, never a 2xx, and leaves nothing
half-written: a delivery refused while the store was down is accepted, once, when it is sent
again after the store recovered.

Both failures are real SQLite conditions, not mocks: a second connection holding the write
lock (``BEGIN IMMEDIATE``, as another process would) and a database that may not grow
(``PRAGMA max_page_count`` on the store's own writer connection: SQLITE_FULL).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from tests.reliability.conftest import URI, Live, LiveFactory
from tests.reliability.helpers import CONFIG, buildconfig, commit_of, push_body, push_headers
from triggerd.store.base import BuildQuery
from triggerd.store.sqlite import SqliteStore

API = "/apis/build.openshift.io/v1/namespaces/default"
#: Not URI: the org route would build the "other" config for the same pushes too.
OTHER_URI = "https://git.example.com/reliability/other.git"


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


async def _deliver(session: aiohttp.ClientSession, live: Live, i: int) -> tuple[int, str]:
    body = push_body(URI, i)
    async with session.post(
        f"{live.url}/hooks/github", data=body, headers=push_headers(body, f"store-{i}")
    ) as response:
        await response.read()
        return response.status, response.headers.get("Retry-After", "")


async def _rest(session: aiohttp.ClientSession, live: Live) -> list[tuple[int, str]]:
    """A create and an instantiate through the REST API: statuses and Retry-After."""
    results = []
    for path, doc in (
        (f"{API}/buildconfigs", buildconfig(OTHER_URI, name="other")),
        (
            f"{API}/buildconfigs/{CONFIG}/instantiate",
            {"kind": "BuildRequest", "metadata": {"name": CONFIG}},
        ),
    ):
        async with session.post(f"{live.url}{path}", json=doc, headers=live.auth) as response:
            await response.read()
            results.append((response.status, response.headers.get("Retry-After", "")))
    return results


async def _revisions(live: Live) -> Counter[str | None]:
    page = await live.engine.store.list_builds(BuildQuery())
    return Counter(b.spec.revision.commit if b.spec.revision else None for b in page.builds)


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return list(conn.execute(sql).fetchall())


async def test_a_locked_database_answers_503_and_nothing_is_half_written(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(busy_timeout=0.05)
    db = next(live.tmp_path.glob("live-*/triggerd.db"))
    async with aiohttp.ClientSession() as session:
        with write_locked(db):
            refused = [await _deliver(session, live, i) for i in range(3)]
            rest = await _rest(session, live)
        assert all(status == 503 and int(after) > 0 for status, after in refused), refused
        assert all(status == 503 and int(after) > 0 for status, after in rest), rest
        assert await _revisions(live) == Counter()
        assert _rows(db, "SELECT count(*) FROM deliveries") == [(0,)]
        assert _rows(db, "SELECT name FROM buildconfigs ORDER BY name") == [(CONFIG,)]

        # Lock gone: the same deliveries are new deliveries, each stored once.
        assert [(await _deliver(session, live, i))[0] for i in range(3)] == [201] * 3
        assert [(await _deliver(session, live, i))[0] for i in range(3)] == [200] * 3
        assert [status for status, _ in await _rest(session, live)] == [201, 201]
    assert await _revisions(live) == Counter({commit_of(i): 1 for i in range(3)} | {None: 1})


async def test_a_full_disk_answers_503_and_nothing_is_half_written(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory()
    store = live.engine.store
    assert isinstance(store, SqliteStore)
    db = next(live.tmp_path.glob("live-*/triggerd.db"))

    def cap_growth(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    def uncap(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count = 1073741823")

    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        await store._write(cap_growth)
        try:
            # Free pages may absorb a few writes; send until the file must grow.
            for i in range(200):
                statuses[i], after = await _deliver(session, live, i)
                assert statuses[i] in (201, 503), statuses[i]
                if statuses[i] == 503:
                    assert int(after) > 0
                    break
            rest = await _rest(session, live)
        finally:
            await store._write(uncap)
        refused = [i for i, s in statuses.items() if s == 503]
        assert refused, "the database never filled up"
        # A small REST write may still fit where the refused one did not: either answer is
        # fine as long as it is the truth.
        assert {status for status, _ in rest} <= {201, 503}, rest
        configs = {row[0] for row in _rows(db, "SELECT name FROM buildconfigs")}
        assert ("other" in configs) == (rest[0][0] == 201)
        accepted = {commit_of(i) for i, s in statuses.items() if s == 201}
        manual = 1 if rest[1][0] == 201 else 0
        assert await _revisions(live) == Counter(
            {c: 1 for c in accepted} | ({None: 1} if manual else {})
        )
        stored_keys = {row[0] for row in _rows(db, "SELECT key FROM deliveries")}
        assert stored_keys == {f"github:store-{i}" for i, s in statuses.items() if s == 201}

        # Room again: everything sent before ends up stored exactly once.
        again = [(await _deliver(session, live, i))[0] for i in statuses]
        assert again == [200 if statuses[i] == 201 else 201 for i in statuses]
    revisions = await _revisions(live)
    assert set(revisions) - {None} == {commit_of(i) for i in statuses}
    assert set(revisions.values()) == {1}, (revisions, statuses, rest)
