"""Image stream and image-change trigger state persistence, in its own SQLite file.

Holds ImageStreams (spec as the user wrote it, status history as builds and imports add
it, and the failed-import condition of each tag) and ``status.imageChangeTriggers`` per
BuildConfig (lastTriggeredImageID, lastTriggerTime, message). It is a separate file
(``<dataDir>/imagestreams.db``) with its own connection rather than tables in the build
store: the build store's schema and its group-commit writer belong to another module, and
nothing here needs to join with builds. It is local to one process, which is why the
Kubernetes store gets :mod:`triggerd.images.streams_kubernetes` instead, shared by every
replica. The trigger states here are a cache: every Build records the images its config's
triggers resolved to (an annotation written with the build), and the runtime corrects
these states from the builds before deciding, which also covers a crash between creating a
build and writing its state here. Every write is committed (``synchronous=FULL``) before
it returns. Runs blocking SQLite calls in a worker thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from triggerd.errors import AlreadyExists, Conflict, NotFound
from triggerd.imagechange import TriggerState
from triggerd.images.streams_base import ImportFailure
from triggerd.model import imagestreams
from triggerd.model import meta as metas

FILE_NAME = "imagestreams.db"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS imagestreams (
        namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
        resource_version INTEGER NOT NULL, created TEXT NOT NULL, doc TEXT NOT NULL,
        PRIMARY KEY (namespace, name))""",
    """CREATE TABLE IF NOT EXISTS trigger_states (
        namespace TEXT NOT NULL, config TEXT NOT NULL, idx INTEGER NOT NULL,
        last_image_id TEXT NOT NULL, last_time TEXT, message TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (namespace, config, idx))""",
    """CREATE TABLE IF NOT EXISTS tag_conditions (
        namespace TEXT NOT NULL, stream TEXT NOT NULL, tag TEXT NOT NULL,
        reason TEXT NOT NULL, message TEXT NOT NULL, time TEXT NOT NULL,
        PRIMARY KEY (namespace, stream, tag))""",
)
#: Columns added after the first release: (table, column, definition).
_ADDED_COLUMNS = (("trigger_states", "await_first", "INTEGER NOT NULL DEFAULT 0"),)


class StreamsStore:
    """Implements :class:`~triggerd.images.streams_base.ImageStreamStore` in one SQLite
    file, with one serialised connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 5000")
        for statement in _SCHEMA:
            conn.execute(statement)
        for table, column, definition in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        self._conn = conn

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await asyncio.to_thread(conn.close)

    async def _run(self, work: Any, *args: Any) -> Any:
        async with self._lock:
            if self._conn is None:
                raise RuntimeError("StreamsStore is not open")
            return await asyncio.to_thread(work, self._conn, *args)

    # ImageStreams -------------------------------------------------------------------------
    async def list_streams(self, namespace: str | None = None) -> list[imagestreams.ImageStream]:
        return list(await self._run(_list, namespace))

    async def get_stream(self, namespace: str, name: str) -> imagestreams.ImageStream:
        return await self._run(_get, namespace, name)  # type: ignore[no-any-return]

    async def create_stream(
        self, stream: imagestreams.ImageStream, *, now: datetime
    ) -> imagestreams.ImageStream:
        return await self._run(_create, stream, now)  # type: ignore[no-any-return]

    async def replace_stream(
        self, stream: imagestreams.ImageStream, *, expected_resource_version: str | None = None
    ) -> imagestreams.ImageStream:
        """Replace the spec; the server-owned history is kept."""
        return await self._run(  # type: ignore[no-any-return]
            _replace, stream, expected_resource_version
        )

    async def delete_stream(self, namespace: str, name: str) -> None:
        await self._run(_delete, namespace, name)

    async def set_import_failure(
        self, namespace: str, stream: str, tag: str, failure: ImportFailure | None
    ) -> None:
        """Record (or, with None, clear after a successful import) a tag's import failure."""
        await self._run(_set_failure, namespace, stream, tag, failure)

    async def import_failures(self, namespace: str, stream: str) -> dict[str, ImportFailure]:
        return await self._run(_failures, namespace, stream)  # type: ignore[no-any-return]

    async def record_tag(
        self, namespace: str, name: str, tag: str, event: imagestreams.TagEvent
    ) -> tuple[imagestreams.ImageStream, bool]:
        """Add a history item in one transaction; False when it already was the newest."""
        return await self._run(_record, namespace, name, tag, event)  # type: ignore[no-any-return]

    # Trigger states -----------------------------------------------------------------------
    async def trigger_states(self, namespace: str, config: str) -> dict[int, TriggerState]:
        return await self._run(_states, namespace, config)  # type: ignore[no-any-return]

    async def put_trigger_states(
        self, namespace: str, config: str, states: Iterable[TriggerState]
    ) -> None:
        await self._run(_put_states, namespace, config, tuple(states))

    async def delete_trigger_states(self, namespace: str, config: str) -> None:
        await self._run(_delete_states, namespace, config)


def _load(row: tuple[Any, ...]) -> imagestreams.ImageStream:
    namespace, _name, uid, version, created, doc = row
    stream = imagestreams.parse(json.loads(doc), default_namespace=namespace)
    meta = stream.meta
    return replace(
        stream,
        meta=replace(
            meta,
            uid=uid,
            resource_version=str(version),
            creation_timestamp=metas.parse_time(created),
        ),
    )


def _dump(stream: imagestreams.ImageStream) -> str:
    doc = stream.to_dict()
    metadata = dict(doc.get("metadata") or {})
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        metadata.pop(key, None)
    doc["metadata"] = metadata
    return json.dumps(doc, sort_keys=True)


_COLUMNS = "namespace, name, uid, resource_version, created, doc"


def _list(conn: sqlite3.Connection, namespace: str | None) -> list[imagestreams.ImageStream]:
    if namespace is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM imagestreams ORDER BY namespace, name")  # noqa: S608
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM imagestreams WHERE namespace = ? ORDER BY name",  # noqa: S608
            (namespace,),
        )
    return [_load(row) for row in rows.fetchall()]


def _row(conn: sqlite3.Connection, namespace: str, name: str) -> tuple[Any, ...]:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM imagestreams WHERE namespace = ? AND name = ?",  # noqa: S608
        (namespace, name),
    ).fetchone()
    if row is None:
        raise NotFound(imagestreams.KIND, f"{namespace}/{name}")
    return tuple(row)


def _get(conn: sqlite3.Connection, namespace: str, name: str) -> imagestreams.ImageStream:
    return _load(_row(conn, namespace, name))


def _create(
    conn: sqlite3.Connection, stream: imagestreams.ImageStream, now: datetime
) -> imagestreams.ImageStream:
    try:
        conn.execute(
            f"INSERT INTO imagestreams ({_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?)",  # noqa: S608
            (
                stream.namespace,
                stream.name,
                str(uuid.uuid4()),
                metas.format_time(now),
                _dump(stream),
            ),
        )
    except sqlite3.IntegrityError as e:
        raise AlreadyExists(imagestreams.KIND, stream.name) from e
    return _get(conn, stream.namespace, stream.name)


def _replace(
    conn: sqlite3.Connection, stream: imagestreams.ImageStream, expected: str | None
) -> imagestreams.ImageStream:
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _load(_row(conn, stream.namespace, stream.name))
        if expected and expected != current.meta.resource_version:
            raise Conflict(
                f'ImageStream "{stream.name}" was changed (resourceVersion '
                f"{current.meta.resource_version}, not {expected}); read it again"
            )
        merged = imagestreams.with_history_of(stream, current)
        conn.execute(
            "UPDATE imagestreams SET doc = ?, resource_version = resource_version + 1 "
            "WHERE namespace = ? AND name = ?",
            (_dump(merged), stream.namespace, stream.name),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return _get(conn, stream.namespace, stream.name)


def _delete(conn: sqlite3.Connection, namespace: str, name: str) -> None:
    cursor = conn.execute(
        "DELETE FROM imagestreams WHERE namespace = ? AND name = ?", (namespace, name)
    )
    if cursor.rowcount == 0:
        raise NotFound(imagestreams.KIND, name)
    conn.execute("DELETE FROM tag_conditions WHERE namespace = ? AND stream = ?", (namespace, name))


def _set_failure(
    conn: sqlite3.Connection, namespace: str, stream: str, tag: str, failure: ImportFailure | None
) -> None:
    if failure is None:
        conn.execute(
            "DELETE FROM tag_conditions WHERE namespace = ? AND stream = ? AND tag = ?",
            (namespace, stream, tag),
        )
        return
    conn.execute(
        "INSERT INTO tag_conditions (namespace, stream, tag, reason, message, time) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, stream, tag) DO UPDATE SET "
        "reason = excluded.reason, message = excluded.message, time = excluded.time",
        (namespace, stream, tag, failure.reason, failure.message, metas.format_time(failure.time)),
    )


def _failures(conn: sqlite3.Connection, namespace: str, stream: str) -> dict[str, ImportFailure]:
    rows = conn.execute(
        "SELECT tag, reason, message, time FROM tag_conditions WHERE namespace = ? AND stream = ?",
        (namespace, stream),
    ).fetchall()
    result: dict[str, ImportFailure] = {}
    for tag, reason, message, when in rows:
        parsed = metas.parse_time(when)
        if parsed is not None:
            result[tag] = ImportFailure(tag=tag, reason=reason, message=message, time=parsed)
    return result


def _record(
    conn: sqlite3.Connection,
    namespace: str,
    name: str,
    tag: str,
    event: imagestreams.TagEvent,
) -> tuple[imagestreams.ImageStream, bool]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _load(_row(conn, namespace, name))
        updated, changed = imagestreams.record(current, tag, event)
        if changed:
            conn.execute(
                "UPDATE imagestreams SET doc = ?, resource_version = resource_version + 1 "
                "WHERE namespace = ? AND name = ?",
                (_dump(updated), namespace, name),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return _get(conn, namespace, name), changed


def _states(conn: sqlite3.Connection, namespace: str, config: str) -> dict[int, TriggerState]:
    rows = conn.execute(
        "SELECT idx, last_image_id, last_time, message, await_first FROM trigger_states "
        "WHERE namespace = ? AND config = ?",
        (namespace, config),
    ).fetchall()
    return {
        idx: TriggerState(
            index=idx,
            last_triggered_image_id=last,
            last_trigger_time=metas.parse_time(when) if when else None,
            message=message,
            await_first=bool(waiting),
        )
        for idx, last, when, message, waiting in rows
    }


def _put_states(
    conn: sqlite3.Connection, namespace: str, config: str, states: tuple[TriggerState, ...]
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for state in states:
            conn.execute(
                "INSERT INTO trigger_states (namespace, config, idx, last_image_id, last_time, "
                "message, await_first) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                "(namespace, config, idx) DO UPDATE SET last_image_id = excluded.last_image_id, "
                "last_time = excluded.last_time, message = excluded.message, "
                "await_first = excluded.await_first",
                (
                    namespace,
                    config,
                    state.index,
                    state.last_triggered_image_id,
                    metas.format_time(state.last_trigger_time) if state.last_trigger_time else None,
                    state.message,
                    int(state.await_first),
                ),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _delete_states(conn: sqlite3.Connection, namespace: str, config: str) -> None:
    conn.execute(
        "DELETE FROM trigger_states WHERE namespace = ? AND config = ?", (namespace, config)
    )
