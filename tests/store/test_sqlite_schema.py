"""SqliteStore's file: pragmas, versioned schema, migrations, refusing newer files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.store.helpers import config, delivery, new_build
from triggerd.errors import PermanentError
from triggerd.model import buildconfigs
from triggerd.model import meta as metas
from triggerd.store import sqlite as sqlite_store
from triggerd.store.sqlite import MIGRATIONS, SchemaTooNew, SqliteStore

LATEST = len(MIGRATIONS)


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as raw:
        return int(raw.execute("PRAGMA user_version").fetchone()[0])


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def make_file_at(path: Path, version: int) -> None:
    """A file as a triggerd that knew only the first ``version`` migrations left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("BEGIN")
        for step in MIGRATIONS[:version]:
            step(raw)
        raw.execute(f"PRAGMA user_version = {version}")
        raw.execute("COMMIT")
    finally:
        raw.close()


async def test_a_new_file_gets_the_latest_schema_and_pragmas(
    store: SqliteStore, db_path: Path
) -> None:
    assert user_version(db_path) == LATEST
    assert {"counter", "buildconfigs", "builds", "deliveries"} <= tables(db_path)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"builds_by_config", "builds_by_phase", "deliveries_by_received"} <= indexes

    def pragmas(conn: sqlite3.Connection) -> tuple[int, int, int]:
        return (
            conn.execute("PRAGMA synchronous").fetchone()[0],
            conn.execute("PRAGMA foreign_keys").fetchone()[0],
            conn.execute("PRAGMA busy_timeout").fetchone()[0],
        )

    # On the writer's own connection: FULL (2) so a commit is an fsync, foreign keys on.
    assert await store._write(pragmas) == (2, 1, 5000)


async def test_an_older_file_is_migrated_keeping_its_data(db_path: Path) -> None:
    make_file_at(db_path, 1)
    # Data written by the older version: a config with its document and counter.
    created = config("app").with_server_fields(
        uid="uid-1", resource_version="7", creation_timestamp=metas.now().replace(microsecond=0)
    )
    with sqlite3.connect(db_path) as raw:
        raw.execute(
            "INSERT INTO buildconfigs VALUES ('default', 'app', 'uid-1', 7, 0, ?)",
            (json.dumps(created.to_dict()),),
        )
        raw.execute("UPDATE counter SET value = 7")
    assert "deliveries" not in tables(db_path)

    store = SqliteStore(db_path)
    await store.open()
    try:
        assert user_version(db_path) == LATEST
        assert "deliveries" in tables(db_path)
        loaded = await store.get_buildconfig("default", "app")
        assert loaded == buildconfigs.parse(created.to_dict())
        # What the new version added works, and the counter carried over.
        result = await store.instantiate([new_build("app")], delivery=delivery("k"))
        assert result.builds[0].meta.resource_version == "8"
        assert (await store.instantiate([new_build("app")], delivery=delivery("k"))).duplicate
    finally:
        await store.close()


async def test_an_empty_file_is_version_zero(db_path: Path) -> None:
    make_file_at(db_path, 0)
    store = SqliteStore(db_path)
    await store.open()
    await store.close()
    assert user_version(db_path) == LATEST


async def test_a_failing_migration_leaves_the_file_as_it_was(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_file_at(db_path, 1)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(sqlite_store, "MIGRATIONS", [*MIGRATIONS, broken])
    store = SqliteStore(db_path)
    with pytest.raises(RuntimeError, match="migration bug"):
        await store.open()
    # All of it or none of it: the deliveries table of step 2 is not there either.
    assert user_version(db_path) == 1
    assert "half_done" not in tables(db_path)
    assert "deliveries" not in tables(db_path)


async def test_a_newer_file_is_refused_untouched(db_path: Path) -> None:
    make_file_at(db_path, LATEST)
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {LATEST + 1}")
        raw.execute("CREATE TABLE from_the_future (x)")
    before = file_bytes(db_path)

    store = SqliteStore(db_path)
    with pytest.raises(SchemaTooNew) as info:
        await store.open()
    assert isinstance(info.value, PermanentError)
    message = str(info.value)
    assert f"schema version {LATEST + 1}" in message and f"version {LATEST}" in message
    assert str(db_path) in message
    assert user_version(db_path) == LATEST + 1
    assert "from_the_future" in tables(db_path)
    assert file_bytes(db_path) == before
    # A failed open leaves the object closed: nothing is running.
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_buildconfig("default", "app")


async def test_open_creates_the_data_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "triggerd.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.create_buildconfig(config("app"))
    finally:
        await store.close()
    assert path.exists()


async def test_open_twice_is_an_error(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError, match="twice"):
        await store.open()


def test_migrate_on_a_plain_connection_is_idempotent(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    try:
        assert sqlite_store.migrate(raw) == 0
        assert sqlite_store.migrate(raw) == LATEST
        assert int(raw.execute("PRAGMA user_version").fetchone()[0]) == LATEST
    finally:
        raw.close()
